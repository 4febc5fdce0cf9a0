"""The `upstream` engine: fronts any OpenAI-compatible server (a vLLM pod, TGI, llama.cpp, ...).

It always asks the upstream to stream, with usage, so time to first token and per-token latency
are measured the same way for every backend, and maps upstream failures to OpenAI-style errors:
an upstream 4xx keeps its status and message, an unreachable upstream is a 502, a silent one a 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import aiohttp
import orjson

from .base import Delta, EngineError, Event, GenerationRequest, Usage

log = logging.getLogger(__name__)

UPSTREAM_ERROR = "upstream_error"
# An error body is read only this far: enough for any real message, bounded for a hostile one.
ERROR_BODY_LIMIT = 64 * 1024


class SSEDecoder:
    """Incremental Server-Sent Events decoder: feed it bytes as they arrive, get each event's
    `data` payload.

    Only `data:` fields matter for the OpenAI streaming format; comments and other fields are
    skipped, and multi-line data is joined with newlines as the SSE spec says. Payloads stay
    bytes (json.loads takes them) and whole network reads are split at once, because this runs
    for every token of every proxied stream.
    """

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume raw bytes (any split); return the data of every event they completed."""
        lines = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
        self._tail = lines.pop()
        out = []
        for line in lines:
            data = self.feed_line(line)
            if data is not None:
                out.append(data)
        return out

    def feed_line(self, line: bytes) -> bytes | None:
        """Consume one line (with or without its line ending); return a completed event's data."""
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._data:
                return None
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            self._data = []
            return data
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        return None  # comments (":...") and other fields (event, id, retry) do not matter here

    def flush(self) -> bytes | None:
        """The last event's data when a stream ended without its closing blank line."""
        if self._tail:
            self.feed_line(self._tail)
            self._tail = b""
        return self.feed_line(b"")


def error_from_body(status: int, body: bytes | str, url: str) -> EngineError:
    """Map an upstream error response to the EngineError our front renders.

    4xx keep their status and the upstream's own message (e.g. vLLM's context-length 400);
    503/504 pass through (overload and timeouts mean the same thing one hop further);
    other 5xx become a 502 that names the upstream.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    message, type_, param, code = text.strip()[:2000] or f"HTTP {status}", None, None, None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else {}
        if isinstance(err, str):  # {"error": "message"} as some servers send
            err = {"message": err}
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
            type_ = err.get("type")
            param = err.get("param")
            code = err.get("code")
    code = None if code is None else str(code)
    if 400 <= status < 500:
        return EngineError(status, message, type_ or "invalid_request_error", param, code)
    if status in (503, 504):
        return EngineError(status, f"upstream {url} answered {status}: {message}", UPSTREAM_ERROR)
    return EngineError(502, f"upstream {url} answered {status}: {message}", UPSTREAM_ERROR)


def stream_error(chunk: dict[str, Any]) -> EngineError:
    """An error the upstream reported inside the stream (vLLM sends `data: {"error": ...}`)."""
    err = chunk.get("error", chunk)
    code = err.get("code") if isinstance(err, dict) else None
    status = int(code) if isinstance(code, int | str) and str(code).isdigit() else 502
    return error_from_body(status if 400 <= status < 600 else 502, json.dumps(chunk), "stream")


def events_from_chunk(kind: str, chunk: dict[str, Any]) -> Iterator[Event]:
    """Our events from one parsed streaming chunk (`text_completion` or `chat.completion.chunk`).

    Empty deltas without a finish reason (e.g. chat's opening `{"role": "assistant"}`) are dropped.
    """
    if "error" in chunk or chunk.get("object") == "error":
        raise stream_error(chunk)
    for choice in chunk.get("choices") or ():
        index = int(choice.get("index", 0))
        if kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        if text or finish:
            yield Delta(index, text, finish)
    usage = chunk.get("usage")
    if usage:
        yield Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def events_from_response(kind: str, body: dict[str, Any]) -> Iterator[Event]:
    """Our events from a non-streaming response, for upstreams that ignore `stream: true`."""
    for choice in body.get("choices") or ():
        index = int(choice.get("index", 0))
        if kind == "chat":
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        yield Delta(index, text, choice.get("finish_reason") or "stop")
    usage = body.get("usage")
    if usage:
        yield Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def approx_tokens(text: str) -> int:
    """A token estimate for upstreams that report no usage (~4 characters a token in English)."""
    return max(1, (len(text) + 3) // 4) if text else 0


def request_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The JSON we send upstream: the request's fields, `extra` passed through, always streaming."""
    body: dict[str, Any] = {"model": model}
    if request.kind == "chat":
        body["messages"] = request.messages or [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    body.update(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        n=request.n,
    )
    if request.stop:
        body["stop"] = request.stop
    if request.seed is not None:
        body["seed"] = request.seed
    body.update(request.extra)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


class UpstreamEngine:
    """Serve requests by streaming them from an OpenAI-compatible `base_url` over pooled
    keep-alive connections; `ready()` follows a periodic health probe of that server."""

    name = "upstream"

    def __init__(
        self,
        base_url: str,
        *,
        model_name: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 1000,
        health_interval: float = 2.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model_name = model_name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.health_interval = health_interval
        self.api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._watches: set[_Watch] = set()
        self._ready = False
        self._upstream_models: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                # No sock_read: aiohttp would re-arm a timer on every network read (~20% of
                # this engine's CPU); the watchdog below enforces `timeout` instead.
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
                headers=headers,
                read_bufsize=1 << 20,  # one SSE line may carry a long chunk (logprobs)
                auto_decompress=True,
            )
        return self._session

    async def start(self) -> None:
        """Open the connection pool, probe once (so a live upstream is ready at once), then
        keep probing in the background."""
        self._ensure_session()
        await self.probe()
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="upstream-probe")

    async def close(self) -> None:
        for task in (self._probe_task, self._watchdog_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe_task = self._watchdog_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    def model_names(self) -> list[str]:
        """The configured name, else what the upstream's /v1/models lists (empty until probed)."""
        if self.model_name:
            return [self.model_name]
        return list(self._upstream_models)

    # -- health ------------------------------------------------------------------------------

    async def probe(self) -> bool:
        """GET /health (falling back to /v1/models for servers without one); refresh model ids."""
        session = self._ensure_session()
        timeout = aiohttp.ClientTimeout(total=min(5.0, max(1.0, self.health_interval)))
        healthy = False
        try:
            async with session.get(f"{self.base_url}/health", timeout=timeout) as resp:
                await resp.read()
                healthy = resp.status == 200
                no_health = resp.status in (404, 405)
            if healthy or no_health:
                async with session.get(f"{self.base_url}/v1/models", timeout=timeout) as resp:
                    if resp.status == 200:
                        body = await resp.json(content_type=None)
                        ids = [str(m["id"]) for m in body.get("data", []) if "id" in m]
                        self._upstream_models = ids or self._upstream_models
                        healthy = True
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError) as exc:
            log.debug("probe of %s failed: %r", self.base_url, exc)
            healthy = False
        self._ready = healthy
        return healthy

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.probe()

    # -- read timeouts -----------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Close responses that have been silent for `timeout` seconds (checked a few times per
        timeout), so a stalled upstream becomes a 504 instead of a hang."""
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(1.0, self.timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for watch in [w for w in self._watches if now - w.last > self.timeout]:
                watch.timed_out = True
                watch.resp.close()

    def _watch(self, resp: aiohttp.ClientResponse) -> _Watch:
        if self._watchdog_task is None or self._watchdog_task.done():
            self._watchdog_task = asyncio.create_task(self._watchdog(), name="upstream-watchdog")
        watch = _Watch(resp, asyncio.get_running_loop().time())
        self._watches.add(watch)
        return watch

    def _timed_out(self) -> EngineError:
        return EngineError(
            504, f"upstream {self.base_url} timed out: no answer for {self.timeout:g}s",
            UPSTREAM_ERROR,
        )

    # -- generation --------------------------------------------------------------------------

    def _upstream_model(self, requested: str) -> str:
        """The model id to send: the requested one if the upstream serves it (or we know nothing),
        else the upstream's first model (our served name may differ from the upstream's)."""
        models = self._upstream_models
        if not models or requested in models:
            return requested
        return models[0]

    def _url(self, request: GenerationRequest) -> str:
        path = "/v1/chat/completions" if request.kind == "chat" else "/v1/completions"
        return self.base_url + path

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """Stream one request from the upstream. Closing this iterator closes the upstream
        response at once, which is how a client disconnect cancels the upstream generation."""
        session = self._ensure_session()
        url = self._url(request)
        body = request_body(request, self._upstream_model(request.model))
        headers = {"x-request-id": request.request_id} if request.request_id else None
        finished: set[int] = set()
        deltas = 0
        usage: Usage | None = None
        resp: aiohttp.ClientResponse | None = None
        watch: _Watch | None = None
        completed = False
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self.timeout):  # until the response headers
                    resp = await session.post(url, json=body, headers=headers)
                watch = self._watch(resp)
                if resp.status >= 400:
                    raw = await resp.content.read(ERROR_BODY_LIMIT)
                    raise error_from_body(resp.status, raw, self.base_url)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    events = list(events_from_response(request.kind, await resp.json()))
                    for event in events:
                        yield event
                    if not any(isinstance(e, Usage) for e in events):
                        yield self._approx_usage(request, events)
                    completed = True
                    return
                decoder = SSEDecoder()
                done = False
                while not done:
                    chunk = await resp.content.readany()
                    watch.last = loop.time()
                    payloads = decoder.feed(chunk) if chunk else [decoder.flush()]
                    for data in payloads:
                        if data is None:
                            continue
                        if data == b"[DONE]":
                            done = True
                            break
                        for event in events_from_chunk(request.kind, orjson.loads(data)):
                            if isinstance(event, Usage):
                                usage = event
                                continue
                            if event.text:
                                deltas += 1
                            if event.finish_reason:
                                finished.add(event.index)
                            yield event
                    if not chunk:
                        break
            except EngineError:
                raise
            except TimeoutError as exc:
                raise self._timed_out() from exc
            except (aiohttp.ClientError, ConnectionError) as exc:
                if watch is not None and watch.timed_out:
                    raise self._timed_out() from exc
                raise EngineError(
                    502, f"upstream {self.base_url} unreachable: {_cause(exc)}", UPSTREAM_ERROR
                ) from exc
            except (ValueError, UnicodeDecodeError) as exc:
                raise EngineError(
                    502, f"upstream {self.base_url} sent a malformed stream: {exc}", UPSTREAM_ERROR
                ) from exc
            if not done and len(finished) < request.n:
                if watch is not None and watch.timed_out:
                    raise self._timed_out()
                raise EngineError(
                    502, f"upstream {self.base_url} ended the stream early", UPSTREAM_ERROR
                )
            if usage is None:
                usage = Usage(approx_tokens(request.prompt), deltas)
            completed = True
            yield usage
        finally:
            if watch is not None:
                self._watches.discard(watch)
            if resp is not None:
                if completed:
                    resp.release()
                else:  # abandoned or failed mid-stream: drop the connection so the upstream stops
                    resp.close()

    def _approx_usage(self, request: GenerationRequest, events: list[Event]) -> Usage:
        text_deltas = sum(1 for e in events if isinstance(e, Delta) and e.text)
        return Usage(approx_tokens(request.prompt), text_deltas)


class _Watch:
    """One in-flight upstream response and when it last sent something (see _watchdog)."""

    __slots__ = ("last", "resp", "timed_out")

    def __init__(self, resp: aiohttp.ClientResponse, last: float) -> None:
        self.resp = resp
        self.last = last
        self.timed_out = False


def _cause(exc: BaseException) -> str:
    """A short human cause for a connection failure ("connection refused", "reset by peer")."""
    inner = getattr(exc, "os_error", None) or exc.__cause__ or exc
    errno = getattr(inner, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return f"{os.strerror(errno).lower()} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {inner}"
