"""The gateway's HTTP/1.1 front on a raw socket: pipelining, keep-alive, chunked and oversized
request bodies, malformed input, 100-continue, HTTP/1.0, and a client leaving mid-stream."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.fixtures.gateway import HOST, FakeUpstream, StartGateway, vs_yaml
from tests.integration.test_gateway_proxy import sample, wait_for_sample
from vllm_canary.gateway import h1server
from vllm_canary.gateway.server import Gateway

# x-ab-test: v2 goes to v2, everything else to v1: answers say which one served them.
AB_ROUTES = vs_yaml(f"""    - match: [{{headers: {{x-ab-test: {{exact: v2}}}}}}]
      route: [{{destination: {{host: {HOST}, subset: v2}}}}]
    - route: [{{destination: {{host: {HOST}, subset: v1}}}}]""")
BODY = b'{"prompt": "hello", "max_tokens": 5}'


def post(body: bytes = BODY, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST /v1/completions HTTP/{version}\r\nHost: localhost\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def connect(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.ports["gateway"])


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off the wire: Content-Length, chunked or to the end of the connection."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = await asyncio.wait_for(reader.read(), 10)
    return status, headers, body


async def test_pipelined_requests_are_answered_in_order(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    upstreams["v2"].delay = 0.2  # the first answer is the slowest, and must still come first
    reader, writer = await connect(gw)
    writer.write(post(extra="x-ab-test: v2\r\n") + post() + post(extra="x-ab-test: v2\r\n"))
    versions = [(await read_answer(reader))[1]["x-model-version"] for _ in range(3)]
    assert versions == ["v2", "v1", "v2"]
    writer.write(post())  # the connection stays open for more
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["text"] == "hello from v1"
    writer.close()


async def test_chunked_request_body_reaches_the_upstream_whole(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    reader, writer = await connect(gw)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for piece in (BODY[:10], BODY[10:]):
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    status, _, _ = await read_answer(reader)
    got = upstreams["v1"].requests[0]
    assert status == 200 and got["body"] == BODY
    assert got["headers"]["content-length"] == str(len(BODY))
    assert "transfer-encoding" not in got["headers"]
    writer.close()


async def test_oversized_body_is_413_and_closes(start_gateway: StartGateway,
                                                upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES, max_request_bytes=1024)
    big = b'{"prompt": "' + b"x" * 4000 + b'"}'
    reader, writer = await connect(gw)
    writer.write(post(big) + post())  # nothing after an oversized body is read
    status, _, body = await read_answer(reader)
    assert status == 413 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert "1024 bytes" in json.loads(body)["error"]["message"]
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, second request dropped
    reader, writer = await connect(gw)  # chunked: the limit counts the decoded bytes
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n%b\r\n" % (len(big), big) + b"0\r\n\r\n")
    assert (await read_answer(reader))[0] == 413
    assert not upstreams["v1"].requests and not upstreams["v2"].requests
    assert sample(gw, "istio_requests_total", response_code="413") == 2


async def test_malformed_request_is_400(start_gateway: StartGateway,
                                        upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n",
                    b"POST /v1/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
                    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        reader, writer = await connect(gw)
        writer.write(garbage)
        status, headers, body = await read_answer(reader)
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "bad_request"
        assert await asyncio.wait_for(reader.read(), 10) == b""
    reader, writer = await connect(gw)  # a head that never ends is cut off, not buffered
    writer.write(b"GET /v1/models HTTP/1.1\r\nx-big: ")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"a" * 70_000)
    status, _, body = await read_answer(reader)
    assert status == 431 and "exceed" in json.loads(body)["error"]["message"]
    assert not upstreams["v1"].requests


HEAD_LIMITS = {
    "bad request line": b"GET\r\n\r\n",
    "unknown method": b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in header name": b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
    "bare LF in request line": b"GET /\nx HTTP/1.1\r\n\r\n",
    "101 headers": b"GET / HTTP/1.1\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(101))
                   + b"\r\n",
    "one 61 KiB header line": b"GET / HTTP/1.1\r\nx-big: " + b"a" * 61 * 1024 + b"\r\n\r\n",
    "61 KiB URL": b"GET /" + b"a" * 61 * 1024 + b" HTTP/1.1\r\n\r\n",
}


async def test_malformed_and_oversized_heads_are_json_4xx_with_one_info_line(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream],
        caplog: pytest.LogCaptureFixture) -> None:
    """Envoy's limits: 60 KiB of head, 100 headers (431); malformed HTTP is 400."""
    gw = await start_gateway(AB_ROUTES)
    caplog.set_level(logging.INFO, logger="vllm_canary.gateway")
    for name, raw in HEAD_LIMITS.items():
        caplog.clear()
        reader, writer = await connect(gw)
        writer.write(raw)
        status, headers, body = await read_answer(reader)
        error = json.loads(body)["error"]
        assert status == (431 if error["code"] == "request_header_fields_too_large" else 400), \
            name
        assert status == 431 or "bad request" in error["message"], name
        assert headers["content-type"] == "application/json", name
        assert set(error) == {"message", "type", "param", "code"}
        assert await asyncio.wait_for(reader.read(), 10) == b""
        rejected = [r for r in caplog.records if "rejected a request" in r.getMessage()]
        assert len(rejected) == 1 and rejected[0].levelno == logging.INFO, name
        assert not any(r.exc_info for r in caplog.records), name
    assert not upstreams["v1"].requests
    # 93 headers and 57 KiB are still fine, with room for the headers the gateway adds
    # (each under the 8 KiB per line aiohttp's server, the upstream here, accepts)
    reader, writer = await connect(gw)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                 + b"".join(b"x-h%d: v\r\n" % i for i in range(85))
                 + b"".join(b"x-big%d: %s\r\n" % (i, b"a" * 8000) for i in range(7)) + b"\r\n")
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_slow_heads_and_stalled_bodies_are_408(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Slowloris: a head trickling in, or a body that stops, does not hold a connection."""
    monkeypatch.setattr(h1server, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setattr(h1server, "BODY_IDLE_TIMEOUT", 1.0)
    gw = await start_gateway(AB_ROUTES)
    reader, writer = await connect(gw)
    writer.write(b"POST /v1/completions HTTP/1.1\r\n")
    for _ in range(3):  # a byte now and then is not enough: the whole head has a deadline
        await asyncio.sleep(0.25)
        writer.write(b"x")
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
    reader, writer = await connect(gw)
    writer.write(post()[:-5])  # all but the last 5 bytes of the body, then nothing
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
    assert not upstreams["v1"].requests


async def test_expect_100_continue_with_an_oversized_body_is_413_at_once(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES, max_request_bytes=4096)
    reader, writer = await connect(gw)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    status, headers, body = await read_answer(reader)  # no 100 Continue first, no body sent
    assert status == 413 and headers["connection"] == "close"
    assert "request body too large" in json.loads(body)["error"]["message"]
    assert not upstreams["v1"].requests


async def test_expect_100_continue(start_gateway: StartGateway,
                                   upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    reader, writer = await connect(gw)
    head = post(extra="Expect: 100-continue\r\n")[:-len(BODY)]
    writer.write(head)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == \
        b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(BODY)
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_http10_stream_ends_with_the_connection(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    upstreams["v1"].chunks, upstreams["v1"].chunk_gap = 3, 0.01
    reader, writer = await connect(gw)
    writer.write(post(json.dumps({"stream": True}).encode(), version="1.0"))
    status, headers, body = await read_answer(reader)
    assert status == 200 and "transfer-encoding" not in headers
    assert body.count(b"data: ") == 4 and body.rstrip().endswith(b"[DONE]")


async def test_client_leaving_mid_stream_cancels_the_upstream(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(AB_ROUTES)
    up = upstreams["v1"]
    up.chunks, up.chunk_gap = 100, 0.1
    reader, writer = await connect(gw)
    writer.write(post(json.dumps({"stream": True}).encode()) + post())  # a second one queued
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"data: " in await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    writer.close()
    await asyncio.wait_for(up.cancelled.wait(), 10)
    assert not up.stream_done.is_set()
    await wait_for_sample(gw, "istio_requests_total", response_flags="DC")
    assert sample(gw, "istio_requests_total", response_flags="DC") == 1
    assert len(up.requests) == 1  # the pipelined request behind it was never sent
