"""The upstream engine's pure parts (SSE decoding, chunk → events, error mapping) and its
behaviour against a small in-process aiohttp fake of an OpenAI server on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from vllm_canary.procs import free_port
from vllm_canary.server.engines.base import Delta, EngineError, GenerationRequest, Usage
from vllm_canary.server.engines.upstream import (
    SSEDecoder,
    UpstreamEngine,
    error_from_body,
    events_from_chunk,
    request_body,
)

CONTEXT_400 = {
    "error": {
        "message": "This model's maximum context length is 256 tokens. However, you requested "
        "300 tokens (290 in the messages, 10 in the completion).",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}


def completion(prompt: str = "hello", **kw: Any) -> GenerationRequest:
    return GenerationRequest(kind="completion", model="m", prompt=prompt, max_tokens=5, **kw)


def chat(text: str = "hi", **kw: Any) -> GenerationRequest:
    messages = [{"role": "user", "content": text}]
    return GenerationRequest(
        kind="chat", model="m", prompt=text, max_tokens=5, messages=messages, **kw
    )


async def collect(engine: UpstreamEngine, request: GenerationRequest) -> list[Any]:
    return [event async for event in engine.generate(request)]


# -- pure parsing ------------------------------------------------------------------------------


def test_sse_decoder_joins_data_lines_and_skips_comments_and_other_fields() -> None:
    decoder = SSEDecoder()
    lines = [b": keep-alive\n", b"event: message\r\n", b"id: 7\n", b"data: {\"a\":\n",
             b"data: 1}\n", b"\n", b"data:[DONE]\n", b"\n"]
    out = [d for d in map(decoder.feed_line, lines) if d is not None]
    assert out == [b'{"a":\n1}', b"[DONE]"]


def test_sse_decoder_gives_the_same_events_however_the_bytes_are_split() -> None:
    stream = b'data: {"x": 1}\r\n\r\n: ping\n\ndata: {"x": 2}\n\ndata: [DONE]\n\n'
    whole = SSEDecoder().feed(stream)
    assert whole == [b'{"x": 1}', b'{"x": 2}', b"[DONE]"]
    for size in (1, 2, 3, 7):
        decoder = SSEDecoder()
        parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert [d for part in parts for d in decoder.feed(part)] == whole


def test_sse_decoder_flushes_an_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x") == []
    assert decoder.flush() == b"x"
    assert decoder.flush() is None


def test_completion_chunk_gives_deltas_finish_and_usage() -> None:
    chunk = {
        "object": "text_completion",
        "choices": [
            {"index": 0, "text": "Hel", "finish_reason": None},
            {"index": 1, "text": "", "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    assert list(events_from_chunk("completion", chunk)) == [
        Delta(0, "Hel"),
        Delta(1, "", "length"),
        Usage(3, 5),
    ]


def test_chat_chunks_drop_the_role_only_opening_delta() -> None:
    opening = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    content = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}
    events = [e for c in (opening, content, last) for e in events_from_chunk("chat", c)]
    assert events == [Delta(0, "Hi"), Delta(0, "", "stop")]


def test_an_error_inside_the_stream_becomes_an_engine_error() -> None:
    with pytest.raises(EngineError) as info:
        list(events_from_chunk("completion", CONTEXT_400))
    assert info.value.status == 400
    assert "maximum context length" in info.value.message


def test_upstream_4xx_keeps_status_message_and_type() -> None:
    err = error_from_body(400, json.dumps(CONTEXT_400).encode(), "http://u")
    assert (err.status, err.type, err.code) == (400, "BadRequestError", "400")
    assert err.message.startswith("This model's maximum context length is 256 tokens")


def test_old_vllm_error_shape_and_plain_text_bodies() -> None:
    old = {"object": "error", "message": "bad model", "type": "NotFoundError", "code": 404}
    assert error_from_body(404, json.dumps(old), "http://u").message == "bad model"
    plain = error_from_body(422, b"nope", "http://u")
    assert (plain.status, plain.message) == (422, "nope")


def test_upstream_5xx_becomes_502_naming_the_upstream_but_503_passes_through() -> None:
    err = error_from_body(500, b'{"error": {"message": "boom"}}', "http://vllm:8000")
    assert (err.status, err.type) == (502, "upstream_error")
    assert "http://vllm:8000" in err.message and "boom" in err.message
    assert error_from_body(503, b"", "http://u").status == 503


def test_request_body_always_streams_with_usage_and_passes_extra_through() -> None:
    request = completion(stop=["\n"], seed=7, extra={"logprobs": 2, "stream": False})
    body = request_body(request, "served")
    assert body["model"] == "served" and body["prompt"] == "hello"
    assert body["stop"] == ["\n"] and body["seed"] == 7 and body["logprobs"] == 2
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    chat_body = request_body(chat(), "served")
    assert chat_body["messages"] == [{"role": "user", "content": "hi"}]
    assert "prompt" not in chat_body


# -- against a fake OpenAI server on loopback ---------------------------------------------------


class FakeUpstream:
    """An OpenAI-ish server whose behaviour each test picks; records what it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.mode = "ok"
        self.usage = True
        self.health = 200
        self.models = ["real-model"]
        self.disconnected = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health_handler)
        app.router.add_get("/v1/models", self.models_handler)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        return app

    async def health_handler(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health)

    async def models_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m} for m in self.models]})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        chat = request.path.endswith("chat/completions")
        if self.mode == "400":
            return web.json_response(CONTEXT_400, status=400)
        if self.mode == "json":
            choice = {"index": 0, "finish_reason": "stop"}
            choice.update({"message": {"content": "whole"}} if chat else {"text": "whole"})
            return web.json_response({"choices": [choice]})
        if self.mode == "slow":
            await asyncio.sleep(5)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            part = {"delta": {"content": text}} if chat else {"text": text}
            return {"choices": [{"index": 0, "finish_reason": finish, **part}], "usage": None}

        if chat:
            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if self.mode == "endless":
            try:
                for _ in range(500):
                    await send(chunk("tok "))
                    await asyncio.sleep(0.01)
            except (ConnectionError, asyncio.CancelledError):
                self.disconnected.set()  # the client went away: as it should after aclose()
                raise
            return resp
        await send(chunk("Hello"))
        if self.mode == "stall":
            await asyncio.sleep(5)
        if self.mode == "midstream-error":
            await send(CONTEXT_400)
            return resp
        if self.mode == "truncated":
            return resp
        await send(chunk(" world"))
        await send(chunk("", "length"))
        if self.usage:
            await send({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}})
        await send("[DONE]")
        return resp


@pytest.fixture
async def fake(aiohttp_server: Any) -> Any:
    upstream = FakeUpstream()
    server = await aiohttp_server(upstream.app())
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


@pytest.fixture
async def engine(fake: Any) -> Any:
    eng = UpstreamEngine(fake.url, health_interval=60)
    await eng.start()
    yield eng
    await eng.close()


async def test_streams_completion_deltas_then_the_upstreams_usage(engine: Any, fake: Any) -> None:
    events = await collect(engine, completion())
    assert events == [Delta(0, "Hello"), Delta(0, " world"), Delta(0, "", "length"), Usage(2, 2)]
    assert fake.bodies[0]["stream"] is True


async def test_streams_chat(engine: Any) -> None:
    events = await collect(engine, chat())
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hello world"
    assert events[-1] == Usage(2, 2)


async def test_counts_tokens_when_the_upstream_reports_no_usage(engine: Any, fake: Any) -> None:
    fake.usage = False
    events = await collect(engine, completion(prompt="a prompt of 24 characters"))
    assert events[-1] == Usage(7, 2)


async def test_accepts_a_non_streaming_answer(engine: Any, fake: Any) -> None:
    fake.mode = "json"
    events = await collect(engine, chat())
    assert events[0] == Delta(0, "whole", "stop")
    assert isinstance(events[-1], Usage)


async def test_upstream_400_keeps_its_status_and_message(engine: Any, fake: Any) -> None:
    fake.mode = "400"
    with pytest.raises(EngineError) as info:
        await collect(engine, completion(prompt="x " * 300))
    assert info.value.status == 400
    assert "maximum context length" in info.value.message


async def test_error_in_the_middle_of_the_stream(engine: Any, fake: Any) -> None:
    fake.mode = "midstream-error"
    with pytest.raises(EngineError) as info:
        await collect(engine, completion())
    assert info.value.status == 400


async def test_stream_cut_short_is_a_502(engine: Any, fake: Any) -> None:
    fake.mode = "truncated"
    with pytest.raises(EngineError) as info:
        await collect(engine, completion())
    assert info.value.status == 502 and "early" in info.value.message


async def test_connection_refused_is_a_502_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    eng = UpstreamEngine(url, health_interval=60)
    await eng.start()
    try:
        assert not eng.ready()
        with pytest.raises(EngineError) as info:
            await collect(eng, completion())
    finally:
        await eng.close()
    assert (info.value.status, info.value.type) == (502, "upstream_error")
    assert url in info.value.message and "refused" in info.value.message.lower()


async def test_silent_upstream_is_a_504(fake: Any) -> None:
    fake.mode = "slow"
    eng = UpstreamEngine(fake.url, timeout=0.2, health_interval=60)
    try:
        with pytest.raises(EngineError) as info:
            await collect(eng, completion())
    finally:
        await eng.close()
    assert info.value.status == 504 and fake.url in info.value.message


async def test_upstream_stalling_mid_stream_is_a_504(fake: Any) -> None:
    fake.mode = "stall"
    eng = UpstreamEngine(fake.url, timeout=0.2, health_interval=60)
    events: list[Any] = []
    try:
        with pytest.raises(EngineError) as info:
            async for event in eng.generate(completion()):
                events.append(event)
    finally:
        await eng.close()
    assert events == [Delta(0, "Hello")]
    assert info.value.status == 504 and "timed out" in info.value.message


async def test_closing_the_iterator_closes_the_upstream_response(engine: Any, fake: Any) -> None:
    fake.mode = "endless"
    events = engine.generate(completion())
    first = await anext(events)
    assert first == Delta(0, "tok ")
    await events.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 10)


async def test_ready_and_model_names_follow_the_probe(engine: Any, fake: Any) -> None:
    assert engine.ready()
    assert engine.model_names() == ["real-model"]
    fake.health = 503
    assert not await engine.probe()
    assert not engine.ready()


async def test_probe_falls_back_to_models_when_there_is_no_health(fake: Any) -> None:
    fake.health = 404
    eng = UpstreamEngine(fake.url, model_name="front-name", health_interval=60)
    await eng.start()
    try:
        assert eng.ready()
        assert eng.model_names() == ["front-name"]
        # Our served name differs from the upstream's id: the upstream gets its own id.
        await collect(eng, GenerationRequest("completion", "front-name", "hi", 3))
    finally:
        await eng.close()
    assert fake.bodies[-1]["model"] == "real-model"


async def test_base_url_may_end_in_v1(fake: Any) -> None:
    eng = UpstreamEngine(fake.url + "/v1/", health_interval=60)
    await eng.start()
    try:
        assert eng.ready()
        assert (await collect(eng, completion()))[-1] == Usage(2, 2)
    finally:
        await eng.close()
