"""Broken upstreams behind the gateway: each gets the client a 5xx within the configured
timeout (never a hang), and Istio telemetry records Envoy's response flag for it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.fixtures.gateway import StartGateway, vs_yaml
from tests.integration.test_gateway_proxy import post, sample, to, wait_for_sample

IDLE = 1.0  # --stream-idle-timeout for these tests (seconds)
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(3600)


async def half_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: applica")
    await asyncio.sleep(3600)


async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(100_000):  # 2 MB of headers, never ending, unless the gateway hangs up
        writer.write(b"x-filler-%06d: %s\r\n" % (i, b"y" * 8))
        await writer.drain()
    await asyncio.sleep(3600)


async def stall_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n{\"text\": ")
    await asyncio.sleep(3600)


async def stall_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n" + b"e\r\ndata: {\"i\":0}\r\n")
    await asyncio.sleep(3600)


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST, not FIN


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def too_many_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(101))
                 + b"content-length: 2\r\n\r\n{}")
    await writer.drain()
    await asyncio.sleep(3600)


async def truncated_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"text\": ")
    await writer.drain()  # then the connection closes: 90 bytes short


async def interim_then_silence(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(3600)


async def bad_status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\n{}")
    await writer.drain()
    await asyncio.sleep(3600)


@pytest.fixture
async def fault_server() -> AsyncIterator[Callable[[Behaviour], Awaitable[int]]]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(behaviour: Behaviour) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await behaviour(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                handlers.discard(task)
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for task in list(handlers):
        task.cancel()
    for server in servers:
        server.close()


def _vs(timeout: str = "") -> str:
    extra = f"timeout: {timeout}, " if timeout else ""
    return vs_yaml(f"    - {{{extra}route: [{to('v1')}]}}")


CASES = [
    (never_answers, 504, "SI"),
    (half_head, 504, "SI"),
    (stall_after_head, 504, "SI"),  # a small JSON answer is read whole before it is sent
    (reset, 503, "UC"),
    (garbage, 502, "UPE"),  # Envoy: 502 "protocol error", flag UPE (istio/istio#36711)
    (truncated_body, 503, "UC"),
    (interim_then_silence, 504, "SI"),
    (bad_status_line, 502, "UPE"),
    (endless_head, 502, "UPE"),  # over Envoy's 60 KiB of response head: refused, not buffered
    (too_many_headers, 502, "UPE"),  # over Envoy's 100 response headers
]


@pytest.mark.parametrize(("behaviour", "status", "flag"), CASES,
                         ids=[c[0].__name__ for c in CASES])
async def test_broken_upstream_is_a_5xx_within_the_idle_timeout(
        start_gateway: StartGateway, fault_server: Callable[[Behaviour], Awaitable[int]],
        behaviour: Behaviour, status: int, flag: str) -> None:
    port = await fault_server(behaviour)
    gw = await start_gateway(_vs(), upstream=[f"v1=http://127.0.0.1:{port}"], health_path="",
                             stream_idle_timeout=IDLE)
    started = time.monotonic()
    got, headers, body = await asyncio.wait_for(post(gw), 10)
    took = time.monotonic() - started
    assert got == status, (body, headers)
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    assert (await _json(body))["error"]["code"] == flag
    assert took < IDLE + 2.0
    await wait_for_sample(gw, "istio_requests_total", response_flags=flag)
    assert sample(gw, "istio_requests_total", response_flags=flag,
                  response_code=str(status)) == 1


async def test_stall_mid_stream_cuts_the_stream_with_flag_si(
        start_gateway: StartGateway, fault_server: Callable[[Behaviour], Awaitable[int]]
) -> None:
    port = await fault_server(stall_mid_stream)
    gw = await start_gateway(_vs(), upstream=[f"v1=http://127.0.0.1:{port}"], health_path="",
                             stream_idle_timeout=IDLE)
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(gw.url() + "/v1/completions",
                                                    data=b'{"prompt":"x","stream":true}') as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), 10)  # truncated, not a clean end
    assert time.monotonic() - started < IDLE + 2.0
    await wait_for_sample(gw, "istio_requests_total", response_flags="SI")
    assert sample(gw, "istio_requests_total", response_flags="SI", response_code="200") == 1


async def bad_chunk_mid_stream(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n" + b"e\r\ndata: {\"i\":0}\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"\r\nzz-not-a-size\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def test_garbage_mid_stream_cuts_the_stream_with_flag_upe(
        start_gateway: StartGateway, fault_server: Callable[[Behaviour], Awaitable[int]]
) -> None:
    port = await fault_server(bad_chunk_mid_stream)
    gw = await start_gateway(_vs(), upstream=[f"v1=http://127.0.0.1:{port}"], health_path="",
                             stream_idle_timeout=IDLE)
    async with aiohttp.ClientSession() as s, s.post(gw.url() + "/v1/completions",
                                                    data=b'{"prompt":"x","stream":true}') as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), 10)
    await wait_for_sample(gw, "istio_requests_total", response_flags="UPE")
    assert sample(gw, "istio_requests_total", response_flags="UPE", response_code="200") == 1


async def test_route_timeout_is_ut_before_the_idle_timeout(
        start_gateway: StartGateway, fault_server: Callable[[Behaviour], Awaitable[int]]
) -> None:
    port = await fault_server(never_answers)
    gw = await start_gateway(_vs("0.5s"), upstream=[f"v1=http://127.0.0.1:{port}"],
                             health_path="", stream_idle_timeout=30.0)
    started = time.monotonic()
    got, _, body = await asyncio.wait_for(post(gw), 10)
    assert (got, (await _json(body))["error"]["code"]) == (504, "UT")
    assert time.monotonic() - started < 2.0
    await wait_for_sample(gw, "istio_requests_total", response_flags="UT")


async def test_the_gateway_answers_others_while_an_upstream_hangs(
        start_gateway: StartGateway, fault_server: Callable[[Behaviour], Awaitable[int]]
) -> None:
    port = await fault_server(never_answers)
    gw = await start_gateway(_vs(), upstream=[f"v1=http://127.0.0.1:{port}"], health_path="",
                             stream_idle_timeout=5.0)
    hung = [asyncio.create_task(post(gw)) for _ in range(20)]
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as s, s.get(gw.url("metrics") + "/metrics") as r:
        assert r.status == 200
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)


async def _json(body: bytes) -> dict[str, Any]:
    return json.loads(body)


def test_the_packaged_routes_have_an_llm_route_timeout() -> None:
    """`up` (and the chart's defaults): 600 s for the whole answer, streamed or not."""
    from vllm_canary.gateway.store import default_routes_path, load_routes

    _, table = load_routes(default_routes_path())
    timeouts = {route.name: route.timeout for vhost in table.virtual_hosts
                for route in vhost.routes}
    assert timeouts == {"ab-test": 600.0, "canary": 600.0}
