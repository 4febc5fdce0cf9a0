"""The OpenAI-compatible front of the simulator (`--engine sim`): validation (api.py), vLLM's
wire shapes (wire.py), metrics and the request log. The engine produces deltas; everything
a client or an operator sees is done here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vllm_canary.server.api import ApiError, decode_json, error_body, parse_request
from vllm_canary.server.engines.base import (
    Delta,
    Engine,
    EngineError,
    Event,
    GenerationRequest,
    Kind,
    Usage,
)
from vllm_canary.server.httperrors import expect_handler
from vllm_canary.server.metrics import ServerMetrics, model_label
from vllm_canary.server.requestlog import RequestLog, sampled
from vllm_canary.server.settings import ServeSettings
from vllm_canary.server.shadow import ShadowMetrics, is_shadow
from vllm_canary.server.wire import (
    ChoiceState,
    role_chunk,
    stream_choice,
    whole_choice,
    whole_extras,
)

log = logging.getLogger("vllm_canary.server")

CLIENT_CLOSED = 499  # nginx's code for "client closed request", as Envoy's DC flag
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


@dataclass
class Trace:
    """What one request did: feeds the metrics and the request-log line."""

    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    first_token_at: float | None = None
    last_token_at: dict[int, float] = field(default_factory=dict)
    choices: dict[int, ChoiceState] = field(default_factory=dict)
    usage: Usage | None = None
    error: str | None = None
    shadow: bool = False  # a mirrored request (server/shadow.py): kept out of served series

    def on_event(self, event: Event, metrics: ServerMetrics) -> None:
        now = time.perf_counter()
        if isinstance(event, Usage):
            self.usage = event
            return
        if self.first_token_at is None:
            self.first_token_at = now
        previous = self.last_token_at.get(event.index)
        if previous is not None and not self.shadow:
            metrics.token_latency.observe(now - previous)
        self.last_token_at[event.index] = now
        self.choice(event.index).add(event)

    def choice(self, index: int) -> ChoiceState:
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = ChoiceState()
        return state


class ModelServer:
    """One served version: `app()` for the API port, `metrics_app()` for the metrics port."""

    def __init__(self, settings: ServeSettings, engine: Engine, *,
                 registry: CollectorRegistry | None = None,
                 request_log: RequestLog | None = None,
                 utilization: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.version = settings.version
        self.registry = registry or CollectorRegistry()
        self.request_log = request_log
        if request_log is not None:  # its records' outcomes, on this server's /metrics
            request_log.register(self.registry)
        self.model = settings.served_model_name()
        self.metrics: ServerMetrics | None = None
        self.shadow_metrics: ShadowMetrics | None = None
        self.draining = False
        self.fingerprint = f"vllm-canary-sim-{self.version}"  # vLLM: f"vllm-{version}-..."
        # The simulator reports its own utilization; real engines get NVML's (or none).
        self.utilization = getattr(engine, "utilization", None) or utilization

    async def start(self) -> None:
        await self.engine.start()
        self.model = model_label(self.model, self.engine.model_names())
        self.metrics = ServerMetrics(self.registry, self.version, self.model, self.engine.name)
        self.shadow_metrics = ShadowMetrics(self.registry, self.version, self.model)

    async def close(self) -> None:
        await self.engine.close()
        if self.request_log is not None:
            await asyncio.to_thread(self.request_log.close)

    # -- applications -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[self._errors])
        app.on_response_prepare.append(self._stamp_version)
        expect = expect_handler(self.settings.max_body_bytes)  # 413 before 100 Continue
        app.router.add_post("/v1/completions", self.completions, expect_handler=expect)
        app.router.add_post("/v1/chat/completions", self.chat_completions,
                            expect_handler=expect)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.on_response_prepare.append(self._stamp_version)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    async def _stamp_version(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-model-version"] = self.version

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except EngineError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {
                404: f"no such endpoint: {request.method} {request.path}",
                405: f"method {request.method} is not allowed on {request.path}",
            }.get(exc.status, exc.reason)
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            return web.json_response(error_body(message, kind), status=exc.status)

    # -- simple endpoints -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        ready = self.engine.ready() and not self.draining
        if self.metrics is not None:
            self.metrics.ready.set(1 if ready else 0)
        state = "ok" if ready else ("draining" if self.draining else "starting")
        body = {"status": state, "version": self.version, "engine": self.engine.name,
                "model": self.model}
        return web.json_response(body, status=200 if ready else 503)

    async def models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "vllm-canary",
                 "root": name, "version": self.version} for name in self.engine.model_names()]
        return web.json_response({"object": "list", "data": data})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        if self.metrics is not None:
            self.metrics.ready.set(1 if self.engine.ready() and not self.draining else 0)
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- generation -----------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        metrics = self.metrics
        assert metrics is not None, "ModelServer.start() was not awaited"
        trace = Trace(shadow=is_shadow(request.headers))
        response_id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
        request_id = request.headers.get("x-request-id") or response_id
        gen: GenerationRequest | None = None
        stream = False
        metrics.in_flight.inc()
        try:
            gen, stream, include_usage = await self._parse(request, kind, request_id)
            if self.utilization is not None:
                metrics.gpu_utilization.observe(self.utilization())
            if stream:
                return await self._stream(request, gen, trace, response_id, include_usage)
            return await self._complete(gen, trace, response_id)
        except EngineError as exc:  # ApiError too: the middleware renders both
            trace.status, trace.error = exc.status, exc.message
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            trace.status, trace.error = CLIENT_CLOSED, "client disconnected"
            raise
        finally:
            metrics.in_flight.dec()
            self._record(request, kind, gen, stream, trace)

    async def _parse(self, request: web.Request, kind: Kind,
                     request_id: str) -> tuple[GenerationRequest, bool, bool]:
        if self.draining or not self.engine.ready():
            raise ApiError(503, "the model server is not ready; retry shortly", "server_error",
                           code="not_ready")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"request body exceeds {self.settings.max_body_bytes} bytes",
                           code="request_too_large") from None
        gen, body = parse_request(kind, decode_json(raw), default_model=self.model,
                                  max_tokens_limit=self.settings.max_tokens_limit,
                                  request_id=request_id)
        if gen.model not in self.engine.model_names():
            raise ApiError(404, f"The model `{gen.model}` does not exist. Served: "
                           f"{', '.join(self.engine.model_names())}.", param="model",
                           code="model_not_found")
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return gen, bool(body.stream), include_usage

    async def _complete(self, gen: GenerationRequest, trace: Trace,
                        response_id: str) -> web.Response:
        metrics = self.metrics
        assert metrics is not None
        async with contextlib.aclosing(self.engine.generate(gen)) as events:
            async for event in events:
                trace.on_event(event, metrics)
        usage = trace.usage or Usage(0, 0)
        count = len(gen.prompt_list()) * gen.n
        choices = [whole_choice(gen, i, trace.choice(i)) for i in range(count)]
        body: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion" if gen.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": gen.model,
            "choices": choices,
            "usage": {**_usage(usage), "prompt_tokens_details": None,
                      "completion_tokens_details": None},
            **whole_extras(gen.kind, self.fingerprint),
        }
        if gen.kind == "completion":
            body["text"] = choices[0]["text"]  # the seed reads `jq -r .text`
        trace.status = 200
        return web.json_response(body)

    async def _stream(self, request: web.Request, gen: GenerationRequest, trace: Trace,
                      response_id: str, include_usage: bool) -> web.StreamResponse:
        metrics = self.metrics
        assert metrics is not None
        created = int(time.time())
        obj = "chat.completion.chunk" if gen.kind == "chat" else "text_completion"
        async with contextlib.aclosing(self.engine.generate(gen)) as events:
            # The first event decides between an HTTP error and a 200 stream.
            first = await anext(events, None)
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            trace.status = 200
            head = {"id": response_id, "object": obj, "created": created, "model": gen.model}
            if gen.kind == "chat" and first is not None:  # vLLM: one role chunk per choice
                for i in range(gen.n):
                    await response.write(_sse({**head, "choices": [role_chunk(i)],
                                               "prompt_token_ids": None, "prompt_text": None}))
            try:
                async for event in _prepend(first, events):
                    trace.on_event(event, metrics)
                    if isinstance(event, Delta):
                        chunk = {**head, "choices": [stream_choice(gen, event,
                                                                   trace.choice(event.index))]}
                        if event.finish_reason is not None and not include_usage:
                            chunk["system_fingerprint"] = self.fingerprint  # as vLLM
                        await response.write(_sse(chunk))
            except EngineError as exc:  # failed mid-stream: tell the client in-band
                trace.status, trace.error = exc.status, exc.message
                await response.write(_sse(exc.body()))
                await response.write(b"data: [DONE]\n\n")
                return response
        if include_usage:
            usage = trace.usage or Usage(0, 0)
            await response.write(_sse({"id": response_id, "object": obj, "created": created,
                                       "model": gen.model, "choices": [],
                                       "usage": _usage(usage),
                                       "system_fingerprint": self.fingerprint}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _record(self, request: web.Request, kind: Kind, gen: GenerationRequest | None,
                stream: bool, trace: Trace) -> None:
        metrics = self.metrics
        assert metrics is not None
        elapsed = time.perf_counter() - trace.started
        ttft = None if trace.first_token_at is None else trace.first_token_at - trace.started
        usage = trace.usage
        counts = (usage.prompt_tokens if usage else None,
                  usage.completion_tokens if usage else None)
        if trace.shadow and self.shadow_metrics is not None:  # never in the served series
            self.shadow_metrics.record(trace.status, elapsed, ttft, *counts)
        else:
            metrics.record(trace.status, elapsed, ttft, *counts)
        if self.request_log is None or gen is None:
            return
        if not sampled(gen.request_id, self.request_log.sample_rate):
            return
        opt_out = request.headers.get("x-no-log", "").strip().lower() in ("1", "true", "yes")
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(),
            "request_id": gen.request_id,
            "version": self.version,
            "model": gen.model,
            "host": self.request_log.host,
            "endpoint": request.path,
            "status": trace.status,
            "latency_s": round(elapsed, 6),
            "ttft_s": None if ttft is None else round(ttft, 6),
            "prompt_tokens": trace.usage.prompt_tokens if trace.usage else None,
            "completion_tokens": trace.usage.completion_tokens if trace.usage else None,
            "opt_out": opt_out,
            "redacted": False,
        }
        if trace.shadow:  # the contract of docs/darklaunch.md: same request_id as the served line
            record["shadow"] = True
        if not opt_out:
            if gen.kind == "chat":
                record["messages"] = gen.messages
            else:
                record["prompt"] = _logged_prompt(gen)
            record["params"] = {"max_tokens": gen.max_tokens, "temperature": gen.temperature,
                                "top_p": gen.top_p, "n": gen.n, "stop": gen.stop,
                                "seed": gen.seed, "stream": stream}
            if gen.json_schema is not None:  # so `shadow report` knows JSON was asked for
                record["params"]["response_format"] = {"type": "json_schema",
                                                       "json_schema": {"schema": gen.json_schema}}
            first = trace.choice(0)
            record["completion"] = first.text
            record["finish_reason"] = first.finish
            if first.tool_name is not None:
                record["tool_calls"] = first.tool_calls()
            record["error"] = trace.error
        self.request_log.write(record)


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _logged_prompt(gen: GenerationRequest) -> str | list[Any]:
    """The prompt as the client sent it: a string, or a list (of strings or token ids)."""
    if not gen.prompts:
        return gen.prompt
    prompts = [p if isinstance(p, str) else list(p) for p in gen.prompts]
    return prompts[0] if len(prompts) == 1 and isinstance(prompts[0], list) else prompts


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _prepend(first: Event | None, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    if first is not None:
        yield first
    async for event in rest:
        yield event
