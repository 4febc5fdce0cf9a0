"""The relay front of engines `vllm` and `upstream`: every method and path goes to the
upstream and its answer comes back unchanged; the seed's metrics and the request log are
taken on the side (server/observe.py) from the bytes that pass.

What the front does to a request: hop-by-hop headers are handled (gateway/pipe.py), `Host`
names the upstream (as nginx's `proxy_pass` does), and a JSON body sent with curl's default
`application/x-www-form-urlencoded` (or with no content type) goes as `application/json`
(vLLM refuses the seed's `curl -d` otherwise: "Only 'application/json' is allowed",
vllm/entrypoints/serve/utils/api_utils.py `validate_json_request`). Nothing is added,
removed or defaulted in a body.

What it does to an answer: `x-model-version` on every response, and a top-level `text`
(= `choices[0].text`) on a non-streamed 200 `/v1/completions` answer, which the seed reads
with `jq -r .text`. It answers itself only: `/health` (ready when the engine is), `/metrics`
(its own series), 400 for a body that is not a JSON object on the generation routes, 413 for
an oversized body, 502 for an unreachable upstream, 504 for a silent one (after
`--upstream-timeout` seconds), 503 while draining or while vLLM's child is still loading;
all with OpenAI-style error bodies.
A client that disconnects cancels the upstream request (logged as 499; not once the stream's
own end went by, which the openai client hangs up after).

Observed on the side: `vllm_requests_total`, latency, prompt and generation tokens (from
`usage`, else counted by deltas: server/observe.py), and, from streamed answers only (a whole
answer shows no first token), time to first token and the gaps between tokens; every relayed
request in `vllm_api_requests_total{endpoint,status}`; the request log for generation routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vllm_canary.errors import UserError
from vllm_canary.gateway.h1client import ConnectFailure, Pool, Response, Silent, UpstreamError
from vllm_canary.gateway.h1server import JSON_HEADERS, H1Server, Incoming
from vllm_canary.gateway.pipe import forwardable, pipe
from vllm_canary.server.api import ApiError, decode_json
from vllm_canary.server.engines.upstream import Relayed
from vllm_canary.server.metrics import ServerMetrics, model_label
from vllm_canary.server.observe import GENERATION, Observation, endpoint_label
from vllm_canary.server.requestlog import RequestLog, redact, sampled
from vllm_canary.server.settings import ServeSettings
from vllm_canary.server.shadow import ShadowMetrics, is_shadow

log = logging.getLogger("vllm_canary.server")

CLIENT_CLOSED = 499  # nginx's code for "client closed request", as Envoy's DC flag
FORM = "application/x-www-form-urlencoded"
SMALL_BODY = 1 << 20  # other answers up to this size (with a length, not SSE) go in one write
OBSERVE_LIMIT = 16 << 20  # whole generation answers up to this size are read and observed
UPSTREAM_ERROR = "upstream_error"
# Request fields that are not sampling parameters (the log keeps the prompt apart).
NOT_PARAMS = frozenset({"prompt", "messages", "input", "model", "stream_options"})


def with_text(raw: bytes, answer: dict[str, Any]) -> bytes:
    """`raw` (a JSON object) with `"text": choices[0].text` appended before its closing brace;
    unchanged when it already has a top-level `text` or its first choice has none."""
    choices = answer.get("choices")
    if "text" in answer or not isinstance(choices, list) or not choices:
        return raw
    first = choices[0]
    text = first.get("text") if isinstance(first, dict) else None
    body = raw.rstrip()
    if not isinstance(text, str) or not body.endswith(b"}"):
        return raw
    return body[:-1] + b',"text":' + orjson.dumps(text) + b"}" + raw[len(body):]


def _error_message(answer: dict[str, Any] | None, raw: bytes) -> str:
    err = (answer or {}).get("error", answer) if answer is not None else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return raw[:500].decode("utf-8", "replace") or "no body"


class RelayFront:
    """One served version in front of a `Relayed` engine: `handle` for the API port,
    `handle_metrics` for the metrics port (both H1Server handlers)."""

    def __init__(self, settings: ServeSettings, engine: Relayed, *,
                 registry: CollectorRegistry | None = None,
                 request_log: RequestLog | None = None,
                 utilization: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.version = settings.version
        self.registry = registry or CollectorRegistry()
        self.request_log = request_log
        self.utilization = utilization
        self.model = settings.served_model_name()
        self.metrics: ServerMetrics | None = None
        self.shadow_metrics: ShadowMetrics | None = None
        self.draining = False
        self.timeout = settings.upstream_timeout
        self._stamp = {"x-model-version": self.version}
        self._json = {"content-type": "application/json", **self._stamp}
        self._pool: Pool | None = None
        self._prefix = self._authority = ""
        self._watched: set[Response] = set()
        self._heads: dict[asyncio.Task[Any], float] = {}  # waiting for an answer's head: since
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.engine.start()
        self.model = model_label(self.model, self.engine.model_names())
        self.metrics = ServerMetrics(self.registry, self.version, self.model, self.engine.name)
        self.shadow_metrics = ShadowMetrics(self.registry, self.version, self.model)
        self._watchdog = asyncio.create_task(self._expire_silent(), name="relay-watchdog")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._pool is not None:
            self._pool.close()
        await self.engine.close()
        if self.request_log is not None:
            await asyncio.to_thread(self.request_log.close)

    def _upstream(self) -> Pool:
        """The keep-alive pool to the engine's URL (known once the engine started: vLLM's
        child port may be chosen at start)."""
        if self._pool is None:
            url = urllib.parse.urlsplit(self.engine.base_url)
            tls = url.scheme == "https"
            self._pool = Pool(url.hostname or "127.0.0.1", url.port or (443 if tls else 80),
                              connect_timeout=min(10.0, self.timeout), idle_timeout=None,
                              tls=tls, retry_stale=True)
            self._prefix, self._authority = url.path.rstrip("/"), url.netloc
        return self._pool

    async def _expire_silent(self) -> None:
        """Give up on requests whose answer's head has not come for `timeout` seconds, and cut
        answers the upstream has been silent on as long (one sweep for all, a few times per
        timeout, instead of a timer per request and per read: asyncio.timeout costs ~7 µs)."""
        interval = max(0.05, min(1.0, self.timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task in [t for t, since in self._heads.items() if now - since > self.timeout]:
                del self._heads[task]
                self._expired.add(task)
                task.cancel()
            for resp in [r for r in self._watched if r.idle_for(now) > self.timeout]:
                resp.expire(f"upstream {self.engine.base_url} sent nothing for "
                            f"{self.timeout:g}s")

    def _ready(self) -> bool:
        return self.engine.ready() and not self.draining

    # -- the front's own answers ---------------------------------------------------------------
    def _local(self, inc: Incoming, exc: ApiError) -> None:
        inc.respond(exc.status, self._json, orjson.dumps(exc.body()))

    def _health(self, inc: Incoming) -> None:
        ready = self._ready()
        if self.metrics is not None:
            self.metrics.ready.set(1 if ready else 0)
        state = "ok" if ready else ("draining" if self.draining else "starting")
        body = {"status": state, "version": self.version, "engine": self.engine.name,
                "model": self.model}
        inc.respond(200 if ready else 503, self._json, orjson.dumps(body))

    async def handle_metrics(self, inc: Incoming) -> None:
        """The metrics port: GET /metrics only."""
        if inc.path != "/metrics" or inc.method not in ("GET", "HEAD"):
            return self._local(inc, ApiError(404, f"no such endpoint: {inc.method} {inc.path}"))
        if self.metrics is not None:
            self.metrics.ready.set(1 if self._ready() else 0)
        body = await asyncio.to_thread(generate_latest, self.registry)
        inc.respond(200, {"content-type": CONTENT_TYPE_LATEST, **self._stamp}, body)

    def _refusal(self, inc: Incoming) -> ApiError | None:
        if inc.too_large:
            return ApiError(413, f"request body exceeds {self.settings.max_body_bytes} bytes",
                            code="request_too_large")
        # Draining, or a vLLM child still loading: 503. An `upstream` that its probe found
        # down is still tried: its own answer, or 502 when it cannot be reached.
        if self.draining or (not self.engine.ready() and getattr(self.engine, "gate", False)):
            return ApiError(503, "the model server is not ready; retry shortly",
                            "server_error", code="not_ready")
        return None

    # -- relaying ------------------------------------------------------------------------------
    async def handle(self, inc: Incoming) -> None:
        """The API port: the front's /health and /metrics, everything else relayed."""
        if inc.method in ("GET", "HEAD"):
            if inc.path == "/health":
                return self._health(inc)
            if inc.path == "/metrics":
                return await self.handle_metrics(inc)
        kind = GENERATION.get(inc.path) if inc.method == "POST" else None
        if kind is None:
            return await self._other(inc)
        return await self._generation(inc, kind)

    def _request_headers(self, inc: Incoming, is_json: bool) -> CIMultiDict[str]:
        headers = forwardable(inc.headers, inc.lower.get("connection", ""))
        headers["Host"] = self._authority
        media = inc.lower.get("content-type", "").split(";", 1)[0].strip().lower()
        if is_json and media in (FORM, ""):  # curl -d's default, or no type at all
            headers["Content-Type"] = "application/json"
        return headers

    def _answer_headers(self, resp: Response) -> CIMultiDict[str]:
        headers = forwardable(resp.headers.items(), resp.headers.get("connection", ""))
        headers["x-model-version"] = self.version
        return headers

    async def _forward(self, inc: Incoming, is_json: bool) -> Response:
        """Send the request upstream; the answer's head, or ApiError 502/504."""
        pool = self._upstream()
        headers = self._request_headers(inc, is_json)
        task = asyncio.current_task()
        assert task is not None
        self._heads[task] = time.monotonic()
        try:
            return await pool.request(inc.method, self._prefix + inc.target, headers, inc.body)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the client went away
            self._expired.discard(task)
            task.uncancel()
            raise ApiError(504, f"upstream {self.engine.base_url} timed out: no answer for "
                           f"{self.timeout:g}s", UPSTREAM_ERROR, code="upstream_timeout") from None
        except ConnectFailure as exc:
            raise ApiError(502, f"upstream {self.engine.base_url} unreachable: {exc}",
                           UPSTREAM_ERROR, code="upstream_unreachable") from None
        except (UpstreamError, OSError) as exc:
            raise ApiError(502, f"upstream {self.engine.base_url} failed before answering: "
                           f"{exc}", UPSTREAM_ERROR, code="upstream_reset") from None
        finally:
            self._heads.pop(task, None)
            self._expired.discard(task)

    async def _read(self, resp: Response) -> bytes:
        """A whole answer body (watched for silence), or ApiError 502/504."""
        self._watched.add(resp)
        try:
            raw = await resp.read()
        except UpstreamError as exc:
            resp.close()
            raise ApiError(504 if isinstance(exc, Silent) else 502,
                           f"upstream answer broke off: {exc}", UPSTREAM_ERROR) from None
        finally:
            self._watched.discard(resp)
        resp.release()
        return raw

    async def _pipe(self, inc: Incoming, resp: Response, headers: Mapping[str, str],
                    on_chunk: Callable[[bytes], None] | None = None) -> str:
        self._watched.add(resp)
        try:
            return await pipe(inc, resp, headers, on_chunk)
        finally:
            self._watched.discard(resp)

    async def _other(self, inc: Incoming) -> None:
        """Any other route: relayed and counted by endpoint and status."""
        status = 500
        try:
            refusal = self._refusal(inc)
            if refusal is not None:
                raise refusal
            is_json = False
            media = inc.lower.get("content-type", "").split(";", 1)[0].strip().lower()
            if inc.body and media in (FORM, ""):  # parsed only to know if it is JSON
                with contextlib.suppress(ApiError):
                    decode_json(inc.body)
                    is_json = True
            resp = await self._forward(inc, is_json)
            status = resp.status
            headers = self._answer_headers(resp)
            length = resp.content_length
            if length is not None and length <= SMALL_BODY and \
                    not resp.headers.get("content-type", "").startswith("text/event-stream"):
                raw = await self._read(resp)
                inc.respond(status, headers, raw, length if inc.head_only else None)
            else:
                status = _piped_status(await self._pipe(inc, resp, headers), status)
        except ApiError as exc:
            status = exc.status
            self._local(inc, exc)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            if self.metrics is not None:
                self.metrics.count_api(endpoint_label(inc.path), status)

    async def _generation(self, inc: Incoming, kind: str) -> None:
        """A completion, chat or responses request: relayed, observed, logged."""
        metrics = self.metrics
        assert metrics is not None, "RelayFront.start() was not awaited"
        started = time.perf_counter()
        shadow = is_shadow(inc.lower)  # a mirror (server/shadow.py): kept out of served series
        obs = Observation(kind, started, _no_gap if shadow else metrics.token_latency.observe)
        status, error, data = 500, None, None
        metrics.in_flight.inc()
        try:
            refusal = self._refusal(inc)
            if refusal is not None:
                raise refusal
            data = decode_json(inc.body)
            if self.utilization is not None:
                metrics.gpu_utilization.observe(self.utilization())
            resp = await self._forward(inc, is_json=True)
            status = resp.status
            headers = self._answer_headers(resp)
            content_type = resp.headers.get("content-type", "")
            length = resp.content_length
            if content_type.startswith("text/event-stream"):
                flag = await self._pipe(inc, resp, headers, obs.feed)
                obs.end()
                if not (flag == "DC" and obs.done):  # hanging up after [DONE] is no cut
                    status = _piped_status(flag, status)
                if status == 200 and obs.error_status is not None:  # vLLM's in-band error
                    status, error = obs.error_status, obs.error
            elif length is not None and length <= OBSERVE_LIMIT and \
                    "content-encoding" not in resp.headers:
                raw = await self._read(resp)
                answer = obs.body(raw) if "json" in content_type else None
                if status >= 400:
                    error = _error_message(answer, raw)
                elif kind == "completion" and answer is not None:
                    raw = with_text(raw, answer)
                inc.respond(status, headers, raw)
            else:  # compressed or unbounded: relayed, not observed
                status = _piped_status(await self._pipe(inc, resp, headers), status)
            if status >= 500 and error is None and status != resp.status:
                error = "the upstream's answer broke off"
            if status == CLIENT_CLOSED:
                error = "client disconnected"
        except ApiError as exc:
            status, error = exc.status, exc.message
            self._local(inc, exc)
        except asyncio.CancelledError:
            if not obs.done:  # the openai client hangs up once [DONE] came: not a cut answer
                status, error = CLIENT_CLOSED, "client disconnected"
            raise
        finally:
            metrics.in_flight.dec()
            self._record(inc, kind, data, obs, status, error, time.perf_counter() - started,
                         shadow)

    # -- metrics and the request log -------------------------------------------------------------
    def _record(self, inc: Incoming, kind: str, data: dict[str, Any] | None, obs: Observation,
                status: int, error: str | None, elapsed: float,
                shadow: bool = False) -> None:
        metrics = self.metrics
        assert metrics is not None
        ttft = obs.ttft()
        prompt_tokens, completion_tokens = obs.prompt_tokens(), obs.completion_tokens()
        if shadow and self.shadow_metrics is not None:
            self.shadow_metrics.record(status, elapsed, ttft, prompt_tokens, completion_tokens)
        else:
            metrics.record(status, elapsed, ttft, prompt_tokens, completion_tokens)
            metrics.count_api(inc.path, status)
        request_log = self.request_log
        if request_log is None or data is None:
            return
        request_id = inc.lower.get("x-request-id") or obs.response_id or uuid.uuid4().hex
        if not sampled(str(request_id), request_log.sample_rate):
            return
        opt_out = inc.lower.get("x-no-log", "").strip().lower() in ("1", "true", "yes")
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(),
            "request_id": request_id,
            "version": self.version,
            "model": data.get("model") or self.model,
            "host": request_log.host,
            "endpoint": inc.path,
            "status": status,
            "latency_s": round(elapsed, 6),
            "ttft_s": None if ttft is None else round(ttft, 6),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "opt_out": opt_out,
            "redacted": False,
        }
        if shadow:  # the contract of docs/darklaunch.md: same request_id as the served line
            record["shadow"] = True
        if not opt_out:
            record.update(_request_text(kind, data))
            record["params"] = {k: v for k, v in data.items() if k not in NOT_PARAMS}
            record["completion"] = obs.texts.get(0, "")
            record["finish_reason"] = obs.finish.get(0)
            record["finish_reasons"] = obs.finish_reasons()
            calls = obs.tool_call_list()
            if request_log.redact:  # requestlog redacts the prompt and completion itself
                for call in calls:
                    call["arguments"] = redact(call["arguments"])[0]
            record["tool_calls"] = calls
            record["usage"] = obs.usage
            record["error"] = error
        request_log.write(record)


def _no_gap(seconds: float) -> None:
    """A shadow answer's inter-token gaps are not served traffic's: not observed."""


def _request_text(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The prompt or messages of a request, as the client sent them (tool results included)."""
    if kind == "chat":
        return {"messages": data.get("messages")}
    if kind == "completion":
        return {"prompt": data.get("prompt")}
    given = data.get("input")  # /v1/responses: a string, or a list of input items
    out: dict[str, Any] = {"prompt": given} if isinstance(given, str) else {"messages": given}
    if data.get("instructions") is not None:
        out["instructions"] = data["instructions"]
    return out


def _piped_status(flag: str, status: int) -> int:
    """The status to count for a piped answer: the upstream's, unless it broke off."""
    return {"": status, "UC": 502, "UPE": 502, "UT": 504, "SI": 504, "DC": CLIENT_CLOSED}[flag]


async def listen(handler: Any, host: str, port: int, max_body: int,
                 version: str | None = None) -> H1Server:
    """An H1Server for `handler` on host:port (its own error answers stamped with
    `x-model-version: version`); a port in use is a one-line UserError."""
    headers = {**JSON_HEADERS, "x-model-version": version} if version else JSON_HEADERS
    try:
        return await H1Server(handler, max_body, headers).start(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason.lower()}") from None


async def drain(server: H1Server, timeout: float) -> None:
    """Stop accepting, let requests in flight finish for up to `timeout` s, then close."""
    if server.server is not None:
        server.server.close()
    tasks = [c.task for c in server.conns if c.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    await server.close()
