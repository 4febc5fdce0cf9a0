"""The relay front (engines `vllm` and `upstream`) in process, in front of a small aiohttp fake of
an OpenAI server on loopback: bytes unchanged both ways, SSE unbuffered, the front's few own
answers (400, 413, 502, 503, 504), cancellation, and what it observes on the side.
The real vLLM is in tests/integration/test_engine_relay_fidelity.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from vllm_canary.procs import free_port
from vllm_canary.server.engines.upstream import UpstreamEngine
from vllm_canary.server.relay import RelayFront, listen
from vllm_canary.server.requestlog import RequestLog
from vllm_canary.server.settings import ServeSettings

# vLLM's own spacing and field order, which a re-serializing front would change.
CHAT_ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",'
               b'"choices":[{"index":0,"message":{"role":"assistant","content":"Gr\xc3\xbc\xc3'
               b'\x9fe","reasoning":null},"logprobs":{"content":[]},"finish_reason":"stop",'
               b'"stop_reason":null}],"usage":{"prompt_tokens":3,"total_tokens":5,'
               b'"completion_tokens":2},"prompt_logprobs":null}')
COMPLETION_ANSWER = (b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
                     b'"choices":[{"index":0,"text":" caf\xc3\xa9","logprobs":null,'
                     b'"finish_reason":"length"}],"usage":{"prompt_tokens":1,'
                     b'"total_tokens":3,"completion_tokens":2}}')
TOOL_ANSWER = {"id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                            "message": {"role": "assistant", "content": None, "tool_calls": [{
                                "id": "call_1", "type": "function",
                                "function": {"name": "get_weather",
                                             "arguments": "{\"city\": \"Paris\"}"}}]}}],
               "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}
CONTEXT_400 = (b'{"error":{"message":"This model\'s maximum context length is 256 tokens.",'
               b'"type":"BadRequestError","param":null,"code":400}}')


def sse(*events: Any) -> list[bytes]:
    return [b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
            for e in events]


def tool_chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


# A streamed tool call, as vLLM's tool parsers (and OpenAI) send it: id and name, then the
# arguments in pieces; no usage (the client did not ask for it).
TOOL_STREAM = sse(
    tool_chunk(role="assistant", content=None),
    tool_chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]),
    tool_chunk(tool_calls=[{"index": 0, "function": {"arguments": "{\"city\": "}}]),
    tool_chunk(tool_calls=[{"index": 0, "function": {"arguments": "\"Paris\"}"}}]),
    tool_chunk(finish="tool_calls"), b"[DONE]",
)
TEXT_STREAM = sse(*({"id": "cmpl-s", "object": "text_completion",
                     "choices": [{"index": 0, "text": t, "finish_reason": f}]}
                    for t, f in (("Hel", None), ("lo", None), ("", "length"))), b"[DONE]")


class Fake:
    """An OpenAI-ish upstream; `mode` picks the behaviour, `seen` records each request."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.mode = "json"
        self.health = 200
        self.gate = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.Response(status=self.health))
        app.router.add_get("/v1/models", lambda r: web.json_response(
            {"object": "list", "data": [{"id": "real-model"}]}))
        app.router.add_route("*", "/{tail:.*}", self.any)
        return app

    async def any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path_qs, "body": body,
                          "headers": list(request.raw_headers)})
        mode = self.mode
        if request.path not in ("/v1/completions", "/v1/chat/completions"):
            return web.json_response({"method": request.method, "path": request.path_qs},
                                     status=201, headers={"x-upstream": "yes"})
        if mode == "json":
            chat = request.path.endswith("chat/completions")
            resp = web.Response(body=CHAT_ANSWER if chat else COMPLETION_ANSWER,
                                content_type="application/json",
                                headers={"x-upstream": "yes", "x-model-version": "theirs"})
            resp.headers.add("set-cookie", "a=1")
            resp.headers.add("set-cookie", "b=2")
            return resp
        if mode == "400":
            return web.Response(status=400, body=CONTEXT_400, content_type="application/json")
        if mode == "tools":
            return web.json_response(TOOL_ANSWER)
        if mode == "slow-head":
            await asyncio.sleep(5)
        if mode == "big":  # 8 MiB as fast as the relay takes them
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(2048):
                await resp.write(b"data: %06d %s\n\n" % (i, b"x" * 4080))
            return resp
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunks = {"tools-stream": TOOL_STREAM}.get(mode, TEXT_STREAM)
        try:
            for i, chunk in enumerate(chunks):
                await resp.write(chunk)
                if i == 0 and mode == "gate":
                    await asyncio.wait_for(self.gate.wait(), 10)
                if i == 0 and mode == "stall":
                    await asyncio.sleep(5)
                if i == len(chunks) - 1 and mode == "hold-end":  # [DONE] sent, end held back
                    await asyncio.wait_for(self.gate.wait(), 10)
                if mode == "endless":
                    for _ in range(1000):
                        await resp.write(sse({"choices": [{"index": 0, "text": "x"}]})[0])
                        await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            self.cancelled.set()
            raise
        return resp


@pytest.fixture
async def fake(aiohttp_server: Any) -> Fake:
    upstream = Fake()
    server = await aiohttp_server(upstream.app())
    upstream.url = str(server.make_url("")).rstrip("/")
    upstream.server = server  # type: ignore[attr-defined]
    return upstream


class Front:
    def __init__(self, relay: RelayFront, url: str, log_dir: Path) -> None:
        self.relay, self.url, self.log_dir = relay, url, log_dir

    def records(self, n: int) -> list[dict[str, Any]]:
        """The first n request-log records (written by a background thread)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [line for p in self.log_dir.glob("*.jsonl")
                     for line in p.read_text().splitlines()]
            if len(lines) >= n:
                return [json.loads(line) for line in lines]
            time.sleep(0.02)
        raise AssertionError(f"fewer than {n} log records")

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        from prometheus_client import generate_latest

        text = generate_latest(self.relay.registry).decode()
        return {tuple(sorted(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == name}


@pytest.fixture
async def start_front(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[RelayFront, Any]] = []

    async def start(url: str, **settings: Any) -> Front:
        log_dir = tmp_path / f"logs-{len(made)}"
        s = ServeSettings(engine="upstream", upstream=url, version="v1",
                          **{"max_body_bytes": 4096, **settings})
        relay = RelayFront(s, UpstreamEngine(url, health_interval=60),
                           request_log=RequestLog(log_dir, "v1"))
        await relay.start()
        server = await listen(relay.handle, "127.0.0.1", 0, s.max_body_bytes, "v1")
        made.append((relay, server))
        return Front(relay, f"http://127.0.0.1:{server.port}", log_dir)

    yield start
    for relay, server in made:
        await server.close()
        await relay.close()


@pytest.fixture
async def front(fake: Fake, start_front: Any) -> Front:
    return await start_front(fake.url)


async def request(method: str, url: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session, \
            session.request(method, url, data=body, headers=headers,
                            skip_auto_headers=["Content-Type"]) as resp:
        return resp.status, resp.headers, await resp.read()


def forwarded(fake: Fake) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in fake.seen[-1]["headers"]:
        out.setdefault(name.decode().lower(), []).append(value.decode())
    return out


# -- bytes unchanged -----------------------------------------------------------------------


async def test_the_request_reaches_the_upstream_byte_for_byte(front: Front, fake: Fake) -> None:
    body = (b'{"model": "m",\n "messages": [{"role": "user", "content": "hi"}],'
            b' "temperature": null, "top_p": null, "vendor_field": [1, 2.50]}')
    status, _, _ = await request("POST", front.url + "/v1/chat/completions?trace=1", body, {
        "content-type": "application/json", "authorization": "Bearer k", "x-custom": "a",
        "connection": "keep-alive, x-hop", "x-hop": "1", "x-request-id": "req-7"})
    assert status == 200
    assert fake.seen[-1]["body"] == body  # nothing added, removed or defaulted
    assert fake.seen[-1]["path"] == "/v1/chat/completions?trace=1"
    got = forwarded(fake)
    assert got["authorization"] == ["Bearer k"] and got["x-custom"] == ["a"]
    assert got["x-request-id"] == ["req-7"] and got["content-type"] == ["application/json"]
    assert "x-hop" not in got and got["host"] == [fake.url.removeprefix("http://")]


async def test_the_answer_comes_back_unchanged_with_the_version_header(front: Front) -> None:
    status, headers, body = await request("POST", front.url + "/v1/chat/completions",
                                          b'{"messages": []}')
    assert status == 200 and body == CHAT_ANSWER
    assert headers["x-upstream"] == "yes" and headers.getall("set-cookie") == ["a=1", "b=2"]
    assert headers.getall("x-model-version") == ["v1"]  # ours, not the upstream's


async def test_a_completion_gets_the_seeds_top_level_text_and_nothing_else(front: Front) -> None:
    _, _, body = await request("POST", front.url + "/v1/completions", b'{"prompt": "x"}')
    assert body == COMPLETION_ANSWER[:-1] + ',"text":" café"}'.encode()
    assert json.loads(body)["text"] == json.loads(body)["choices"][0]["text"]


async def test_curls_form_content_type_or_none_goes_as_json_and_only_for_json(
        front: Front, fake: Fake) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    await request("POST", front.url + "/v1/completions", b'{"prompt":"hello"}', form)
    assert forwarded(fake)["content-type"] == ["application/json"]
    await request("POST", front.url + "/tokenize", b'{"prompt":"hello"}', form)
    assert forwarded(fake)["content-type"] == ["application/json"]
    await request("POST", front.url + "/v1/audio/transcriptions", b"a=1&b=2", form)
    assert forwarded(fake)["content-type"] == [form["content-type"]]
    await request("POST", front.url + "/tokenize", b'{"prompt":"x"}',
                  {"content-type": "text/plain"})
    assert forwarded(fake)["content-type"] == ["text/plain"]  # a type the client chose stays
    await request("POST", front.url + "/v1/completions", b'{"prompt":"x"}')  # no type at all
    assert forwarded(fake)["content-type"] == ["application/json"]


async def test_any_method_and_path_is_relayed(front: Front, fake: Fake) -> None:
    for method, path in (("GET", "/version"), ("PUT", "/v1/anything?x=1&y=%20"),
                         ("DELETE", "/v1/load_lora_adapter"), ("POST", "/v1/embeddings")):
        status, headers, body = await request(method, front.url + path, b"{}")
        assert status == 201 and json.loads(body) == {"method": method, "path": path}
        assert headers["x-model-version"] == "v1"
    status, headers, body = await request("HEAD", front.url + "/version")
    assert status == 201 and body == b"" and int(headers["content-length"]) > 0


async def test_upstream_errors_reach_the_client_verbatim(front: Front, fake: Fake) -> None:
    fake.mode = "400"
    status, _, body = await request("POST", front.url + "/v1/completions", b'{"prompt": "x"}')
    assert (status, body) == (400, CONTEXT_400)
    record = front.records(1)[0]
    assert record["status"] == 400 and "maximum context length" in record["error"]


async def test_sse_is_relayed_chunk_by_chunk_unbuffered(front: Front, fake: Fake) -> None:
    fake.mode = "gate"
    async with aiohttp.ClientSession() as session, \
            session.post(front.url + "/v1/completions", data=b'{"stream": true}') as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == TEXT_STREAM[0]  # arrived while the upstream holds the rest back
        fake.gate.set()
        rest = await resp.content.read()
    assert first + rest == b"".join(TEXT_STREAM)  # no `text` added to a stream either


# -- what the front refuses or answers itself ------------------------------------------------


async def test_a_body_that_is_not_a_json_object_is_a_400_and_not_forwarded(
        front: Front, fake: Fake) -> None:
    for body in (b"prompt=hello", b"", b"[1, 2]", b'{"prompt": "x"'):
        status, _, raw = await request("POST", front.url + "/v1/completions", body)
        assert status == 400
        assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert fake.seen == []


async def test_an_oversized_body_is_a_413(front: Front, fake: Fake) -> None:
    status, headers, raw = await request("POST", front.url + "/v1/completions",
                                         b'{"prompt": "' + b"x" * 5000 + b'"}')
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    assert headers["x-model-version"] == "v1" and fake.seen == []


async def test_malformed_http_is_a_json_400_with_the_version_header(front: Front) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(front.url.rsplit(":", 1)[1]))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"x-model-version: v1" in head.lower()
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


async def test_an_unreachable_upstream_is_a_502(fake: Fake, start_front: Any) -> None:
    front = await start_front(fake.url)
    await fake.server.close()  # type: ignore[attr-defined]
    status, headers, raw = await request("POST", front.url + "/v1/completions", b"{}")
    error = json.loads(raw)["error"]
    assert status == 502 and error["type"] == "upstream_error" and fake.url in error["message"]
    assert headers["x-model-version"] == "v1"
    status, _, _ = await request("GET", front.url + "/version")
    assert status == 502


async def test_a_silent_upstream_is_a_504(fake: Fake, start_front: Any) -> None:
    front = await start_front(fake.url, upstream_timeout=0.3)
    fake.mode = "slow-head"
    status, _, raw = await request("POST", front.url + "/v1/completions", b'{"stream": true}')
    assert status == 504 and "timed out" in json.loads(raw)["error"]["message"]


async def test_an_upstream_stalling_mid_stream_cuts_the_answer_and_counts_504(
        fake: Fake, start_front: Any) -> None:
    front = await start_front(fake.url, upstream_timeout=0.3)
    fake.mode = "stall"
    async with aiohttp.ClientSession() as session, \
            session.post(front.url + "/v1/completions", data=b'{"stream": true}') as resp:
        assert await resp.content.readuntil(b"\n\n") == TEXT_STREAM[0]
        with pytest.raises(aiohttp.ClientPayloadError):  # truncated, never a clean end
            await asyncio.wait_for(resp.content.read(), 5)
    assert front.records(1)[0]["status"] == 504
    assert dict(front.samples("vllm_requests_total"))[
        (("model", "real-model"), ("status", "504"), ("version", "v1"))] == 1


async def test_a_client_disconnect_cancels_the_upstream_request(front: Front,
                                                                fake: Fake) -> None:
    fake.mode = "endless"
    async with aiohttp.ClientSession() as session:
        resp = await session.post(front.url + "/v1/completions", data=b'{"stream": true}')
        await resp.content.readuntil(b"\n\n")
        resp.close()
    await asyncio.wait_for(fake.cancelled.wait(), 10)
    record = front.records(1)[0]
    assert record["status"] == 499 and record["error"] == "client disconnected"


async def test_a_slow_client_gets_every_byte_in_order(front: Front, fake: Fake) -> None:
    """Back-pressure: the client reads nothing for a while, then all; the relay holds the
    upstream back meanwhile instead of buffering without bound or dropping."""
    fake.mode = "big"
    async with aiohttp.ClientSession() as session, \
            session.post(front.url + "/v1/completions", data=b'{"stream": true}') as resp:
        await asyncio.sleep(0.5)  # aiohttp stops reading the socket once its buffer is full
        raw = await asyncio.wait_for(resp.content.read(), 30)
    events = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [int(e[6:12]) for e in events] == list(range(2048))
    assert all(len(e) == 6 + 7 + 4080 for e in events)


async def test_hanging_up_after_done_is_a_complete_answer(front: Front, fake: Fake) -> None:
    """The openai client closes the connection once `data: [DONE]` came, maybe before the
    chunked end: that answer was not cut short (200, not 499)."""
    fake.mode = "hold-end"
    reader, writer = await asyncio.open_connection("127.0.0.1", int(front.url.rsplit(":", 1)[1]))
    body = b'{"stream": true}'
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                 % (len(body), body))
    await asyncio.wait_for(reader.readuntil(b"data: [DONE]\n\n"), 10)
    writer.close()
    labels = (("model", "real-model"), ("version", "v1"))
    for _ in range(500):  # the front sees the hang-up on the event loop: let it run
        if front.samples("vllm_requests_in_flight")[labels] == 0:
            break
        await asyncio.sleep(0.01)
    record = front.records(1)[0]
    assert (record["status"], record["error"]) == (200, None)
    fake.gate.set()


async def test_health_follows_the_engine_and_metrics_are_the_fronts_own(
        front: Front, fake: Fake) -> None:
    status, headers, raw = await request("GET", front.url + "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    assert headers["x-model-version"] == "v1"
    status, _, raw = await request("GET", front.url + "/metrics")
    assert status == 200 and b"vllm_engine_ready" in raw
    fake.health = 503
    await front.relay.engine.probe()  # type: ignore[attr-defined]
    status, _, raw = await request("GET", front.url + "/health")
    assert status == 503 and json.loads(raw)["status"] == "starting"
    # Unready by its probe, an upstream is still tried: its own answer (or a 502) comes back.
    status, _, _ = await request("POST", front.url + "/v1/completions", b"{}")
    assert status == 200 and len(fake.seen) == 1
    front.relay.draining = True
    status, _, raw = await request("POST", front.url + "/v1/completions", b"{}")
    assert status == 503 and json.loads(raw)["error"]["code"] == "not_ready"
    assert len(fake.seen) == 1


# -- observed on the side ------------------------------------------------------------------------


async def test_a_streamed_tool_call_is_observed_and_logged(front: Front, fake: Fake) -> None:
    fake.mode = "tools-stream"
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "tool", "tool_call_id": "call_0", "content": "sunny"}]
    body = json.dumps({"model": "m", "messages": messages, "stream": True, "tools": []})
    status, _, raw = await request("POST", front.url + "/v1/chat/completions", body.encode(),
                                   {"x-request-id": "abc"})
    assert status == 200 and raw == b"".join(TOOL_STREAM)
    (record,) = front.records(1)
    assert record["request_id"] == "abc" and record["messages"] == messages
    assert record["tool_calls"] == [{"choice": 0, "name": "get_weather",
                                     "arguments": '{"city": "Paris"}'}]
    assert record["finish_reasons"] == ["tool_calls"] and record["usage"] is None
    assert record["completion_tokens"] == 3  # counted by deltas: no usage in the stream
    assert record["params"] == {"stream": True, "tools": []} and record["ttft_s"] >= 0
    labels = (("model", "real-model"), ("version", "v1"))
    assert front.samples("vllm_generation_tokens_total")[labels] == 3
    assert front.samples("vllm_time_to_first_token_seconds_count")[labels] == 1
    assert front.samples("vllm_token_latency_seconds_count")[labels] == 2


async def test_a_whole_answer_is_counted_from_its_usage(front: Front) -> None:
    await request("POST", front.url + "/v1/chat/completions",
                  b'{"messages": [{"role": "user", "content": "me@example.com"}]}')
    (record,) = front.records(1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (3, 2)
    assert record["completion"] == "Grüße" and record["finish_reason"] == "stop"
    assert record["messages"] == [{"role": "user", "content": "[EMAIL]"}]
    assert record["ttft_s"] is None  # a whole answer shows no first token
    labels = (("model", "real-model"), ("version", "v1"))
    assert front.samples("vllm_prompt_tokens_total")[labels] == 3


async def test_other_paths_are_counted_by_a_bounded_endpoint_label(front: Front) -> None:
    for path in ("/tokenize", "/tokenize", "/wp-admin/setup.php", "/x/1", "/v1/responses/r1"):
        await request("POST", front.url + path, b"{}")
    await request("POST", front.url + "/v1/completions", b"{}")
    counts = {dict(k)["endpoint"]: v for k, v in
              front.samples("vllm_api_requests_total").items()}
    assert counts == {"/tokenize": 2, "other": 2, "/v1/responses/{response_id}": 1,
                      "/v1/completions": 1}
    served = front.samples("vllm_requests_total")  # generation requests only
    assert sum(served.values()) == 1


async def test_the_openai_client_gets_tool_calls_streamed_and_not(front: Front,
                                                                 fake: Fake) -> None:
    client = openai.AsyncOpenAI(base_url=front.url + "/v1", api_key="k", max_retries=0)
    args: dict[str, Any] = dict(model="m", messages=[{"role": "user", "content": "Paris?"}],
                                tools=[{"type": "function", "function": {
                                    "name": "get_weather", "parameters": {"type": "object"}}}])
    fake.mode = "tools"
    answer = await client.chat.completions.create(**args)
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == (  # type: ignore[union-attr]
        "call_1", "get_weather", '{"city": "Paris"}')
    fake.mode = "tools-stream"
    arguments, names = "", set()
    async for chunk in await client.chat.completions.create(**args, stream=True):
        for piece in chunk.choices[0].delta.tool_calls or ():
            arguments += piece.function.arguments or ""  # type: ignore[union-attr]
            names.add(piece.function.name)  # type: ignore[union-attr]
    assert arguments == '{"city": "Paris"}' and "get_weather" in names
    await client.close()


# -- the engine: where the upstream is and whether it is up ------------------------------------


async def test_ready_and_model_names_follow_the_probe(fake: Fake) -> None:
    engine = UpstreamEngine(fake.url + "/v1/", health_interval=60)  # a client-style base URL
    await engine.start()
    try:
        assert engine.ready() and engine.model_names() == ["real-model"]
        assert engine.base_url == fake.url
        fake.health = 503
        assert not await engine.probe() and not engine.ready()
        fake.health = 404  # no /health: /v1/models decides
        assert await engine.probe()
        fake.health = 401  # wants a key: up (the clients' keys are relayed)
        assert await engine.probe()
    finally:
        await engine.close()


async def test_a_configured_name_labels_the_metrics_and_is_not_sent(fake: Fake,
                                                                   start_front: Any) -> None:
    front = await start_front(fake.url, model_name="front-name")
    await request("POST", front.url + "/v1/completions", b'{"model": "real-model"}')
    assert json.loads(fake.seen[-1]["body"]) == {"model": "real-model"}
    assert (("model", "front-name"), ("status", "200"), ("version", "v1")) in \
        front.samples("vllm_requests_total")


async def test_an_unreachable_upstream_at_start_is_not_ready() -> None:
    engine = UpstreamEngine(f"http://127.0.0.1:{free_port()}", health_interval=60)
    await engine.start()
    try:
        assert not engine.ready() and engine.model_names() == []
    finally:
        await engine.close()
