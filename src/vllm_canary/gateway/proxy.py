"""The streaming reverse proxy: executes a routing Decision the way Envoy would.

Fault injection, retries (only before anything went downstream), per-try and route timeouts,
a stream idle timeout, header manipulation, fire-and-forget mirrors, SSE passed through chunk by
chunk, and a client disconnect that cancels the upstream request. Every request is recorded in
Istio telemetry with Envoy's response flags (UH, UF, UC, UPE, UT, SI, URX, DC, NR, FI, DI).

Timeouts (all asyncio timers around the h1client calls):
- route `timeout` (Istio; none by default): the whole request, 504 and UT, or a cut stream;
- `retries.perTryTimeout`: one attempt, 504 and UT (retried on 5xx/gateway-error/reset);
- the stream idle timeout (`--stream-idle-timeout`, 300 s as Envoy's `stream_idle_timeout`):
  no response head within it, or no body bytes for that long once streaming, flag SI. Envoy's
  connection manager answers 408 there because its timer does not know which side is idle;
  here only the upstream can be (a slow client is the front's header/body read timeouts), so
  the answer is 504, as Envoy's upstream `per_try_idle_timeout` gives: a canary that hangs
  shows up as 5xx in the error rate the rollout watches, not as client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from vllm_canary.gateway.endpoints import Endpoint, Endpoints
from vllm_canary.gateway.h1client import (
    ConnectFailure,
    Pool,
    ProtocolError,
    Response,
    UpstreamError,
)
from vllm_canary.gateway.h1server import (
    JSON_HEADERS,
    MAX_HEAD,
    MAX_HEADERS,
    Incoming,
    error_body,
)
from vllm_canary.gateway.mirror import Mirror
from vllm_canary.gateway.pipe import forwardable, pipe
from vllm_canary.gateway.routing import (
    Destination,
    HeaderEdit,
    HttpRoute,
    Retries,
    RouteTable,
    decide,
    routing_request,
)
from vllm_canary.gateway.store import RouteStore
from vllm_canary.gateway.telemetry import UNKNOWN, DestinationLabels, Telemetry

SMALL_BODY = 1 << 20  # answers up to this size (with a length, not SSE) are sent in one write
RESET_MSG = "upstream connect error or disconnect/reset before headers. reset reason: "
_NO_TIMER = contextlib.nullcontext()  # stands in for asyncio.timeout(None), which arms nothing


@dataclass
class Failure:
    """An attempt that got no usable response: Envoy's flag, local status and message."""

    flag: str
    status: int
    message: str
    conditions: frozenset[str]  # retryOn conditions that retry it


CONNECT_FAILURE = frozenset({"connect-failure", "5xx", "gateway-error", "reset"})
RESET = frozenset({"reset", "5xx", "gateway-error"})
PER_TRY_TIMEOUT = frozenset({"5xx", "gateway-error", "reset"})


def retriable_status(policy: Retries, status: int) -> bool:
    on = policy.retry_on
    return (
        ("5xx" in on and status >= 500)
        or ("gateway-error" in on and status in (502, 503, 504))
        or ("retriable-status-codes" in on and status in policy.status_codes)
        or ("retriable-4xx" in on and status == 409)
    )


def apply_edit(headers: CIMultiDict[str], edit: HeaderEdit) -> None:
    """Envoy's order: remove, then set (replace), then add (append)."""
    for name in edit.remove:
        headers.popall(name, None)
    for name, value in edit.set:
        headers[name] = value
    for name, value in edit.add:
        headers.add(name, value)


@dataclass
class Exchange:
    """Per-request bookkeeping for telemetry."""

    started: float
    request_bytes: int = 0
    response_bytes: int = 0
    status: int = 0
    flags: list[str] = field(default_factory=list)
    dest: DestinationLabels = UNKNOWN

    def sent(self, chunk: bytes) -> None:
        self.response_bytes += len(chunk)


class Proxy:
    """The OpenAI-facing handler. One instance per gateway; state is the live RouteStore."""

    def __init__(self, store: RouteStore, endpoints: Endpoints, telemetry: Telemetry,
                 session: aiohttp.ClientSession, rng: random.Random | None = None,
                 max_mirrors_in_flight: int = 64, connect_timeout: float = 10.0,
                 idle_timeout: float = 300.0, access_log: logging.Logger | None = None) -> None:
        """`idle_timeout` is the stream idle timeout in seconds (see the module docstring)."""
        self.store = store
        self.endpoints = endpoints
        self.telemetry = telemetry
        self.session = session
        self.rng = rng or random.Random()
        self.mirror = Mirror(store, endpoints, telemetry, session, max_mirrors_in_flight)
        self._pools: dict[str, tuple[Pool, str]] = {}
        self.connect_timeout, self.idle_timeout = connect_timeout, idle_timeout
        self.access_log = access_log
        self._labels_cache: dict[tuple[str, str | None, Endpoint | None], DestinationLabels] = {}
        self._labels_table: RouteTable | None = None

    def _pool(self, ep: Endpoint) -> tuple[Pool, str]:
        """The keep-alive pool for an endpoint and the path prefix of its URL."""
        found = self._pools.get(ep.url)
        if found is None:
            url = urllib.parse.urlsplit(ep.url)
            tls = url.scheme == "https"
            found = self._pools[ep.url] = (Pool(
                url.hostname or "127.0.0.1", url.port or (443 if tls else 80),
                self.connect_timeout, self.idle_timeout, tls=tls), url.path.rstrip("/"))
        return found

    async def handle(self, request: Incoming) -> None:
        ex = Exchange(time.monotonic())
        try:
            await self._handle(request, ex)
        except asyncio.CancelledError:
            ex.flags.append("DC")  # the client went away; the upstream request is cancelled
            raise
        finally:
            took = time.monotonic() - ex.started
            self.telemetry.record(ex.dest, ex.status, ex.flags, took, ex.request_bytes,
                                  ex.response_bytes)
            if self.access_log is not None:
                self.access_log.info('%s "%s %s HTTP/%s" %d %s %d %d %.1fms %s', request.remote,
                                     request.method, request.target, request.version,
                                     ex.status, ",".join(ex.flags) or "-", ex.request_bytes,
                                     ex.response_bytes, took * 1000, ex.dest.workload)

    def _local(self, request: Incoming, ex: Exchange, status: int, flag: str,
               message: str) -> None:
        ex.status = status
        if flag != "-":
            ex.flags.append(flag)
        body = error_body(status, message, flag)
        ex.response_bytes = len(body)
        request.respond(status, JSON_HEADERS, body)

    async def _handle(self, request: Incoming, ex: Exchange) -> None:
        if request.too_large:
            return self._local(request, ex, 413, "-", "request body too large: the gateway "
                               f"accepts up to {request.conn.max_body} bytes "
                               "(--max-request-bytes)")
        body = request.body
        ex.request_bytes = len(body)
        routed = routing_request(request.method, request.target, request.host, request.headers,
                                 request.lower)  # what Envoy's router sees (normalized path)
        if routed is None:
            return self._local(request, ex, 400, "-", "bad request path (Envoy's path "
                               "normalization refuses a NUL byte)")
        req, request.target = routed
        table = self.store.table
        decision = decide(table, req, self.rng)
        if decision.route is None or decision.destination is None:
            where = f"VirtualService {decision.vhost.namespace}/{decision.vhost.name}" \
                if decision.vhost else f"any VirtualService (host {request.host})"
            return self._local(request, ex, 404, "NR", f"no http route of {where} matches "
                                              f"{request.method} {request.path}")
        route, dest = decision.route, decision.destination
        ex.dest = self._labels(table, dest, None)
        if decision.delay:
            ex.flags.append("DI")
            await asyncio.sleep(decision.delay)
        if decision.abort_status is not None:
            return self._local(request, ex, decision.abort_status, "FI", "fault filter abort")
        headers = forwardable(request.headers, req.headers.get("connection", ""))
        remote = request.remote or "127.0.0.1"
        xff = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{xff}, {remote}" if xff else remote
        headers.setdefault("x-forwarded-proto", request.scheme)
        if "x-request-id" not in headers:
            headers["x-request-id"] = str(uuid.UUID(bytes=os.urandom(16), version=4))
        apply_edit(headers, route.headers.request)
        apply_edit(headers, dest.headers.request)
        # + x-envoy-attempt-count and content-length, which each attempt adds (~64 bytes)
        if len(headers) + 2 > MAX_HEADERS or \
                sum(len(k) + len(v) + 4 for k, v in headers.items()) + 64 > MAX_HEAD:
            # what the front would refuse from a client (and an upstream's head limits are the
            # same), it does not send on once the forwarding headers are added
            return self._local(request, ex, 431, "-", "request headers too large to forward: "
                               f"at most {MAX_HEADERS} headers and {MAX_HEAD} bytes, including "
                               "the x-forwarded-*, x-request-id and route headers added")
        for shadow in decision.mirrors:
            self.mirror.send(shadow, request, headers, body)
        try:
            if route.timeout is None:  # no timer to arm (a TimeoutError may still come up)
                return await self._forward(request, ex, table, route, dest, headers, body)
            async with asyncio.timeout(route.timeout):
                return await self._forward(request, ex, table, route, dest, headers, body)
        except TimeoutError:
            if request.started:  # answer already streaming: cut it off
                ex.flags.append("UT")
                return request.abort()
            return self._local(request, ex, 504, "UT", "upstream request timeout")

    def _labels(self, table: RouteTable, dest: Destination,
                ep: Endpoint | None) -> DestinationLabels:
        """Telemetry labels for a destination (and the endpoint, once one is picked), cached
        for the current routing table."""
        if table is not self._labels_table:
            self._labels_cache.clear()
            self._labels_table = table
        key = (dest.host, dest.subset, ep)
        found = self._labels_cache.get(key)
        if found is not None:
            return found
        if ep is not None:
            found = DestinationLabels.of(dest.host, ep.version, ep.labels.get("app"),
                                         ep.workload)
        else:
            svc = table.services.get(dest.host)
            labels = svc.subsets.get(dest.subset or "", {}) if svc else {}
            found = DestinationLabels.of(dest.host, labels.get("version", dest.subset),
                                         labels.get("app"))
        self._labels_cache[key] = found
        return found

    async def _forward(self, request: Incoming, ex: Exchange, table: RouteTable,
                       route: HttpRoute, dest: Destination, headers: CIMultiDict[str],
                       body: bytes) -> None:
        """Try the destination's endpoints, with `table` the snapshot `route` was decided on
        (a reload meanwhile does not mix two tables in one request)."""
        svc = table.services.get(dest.host)
        candidates = self.endpoints.select(table, dest)
        policy = route.retries
        tried: list[Endpoint] = []
        for attempt in range(1, policy.attempts + 2):
            ep = self.endpoints.pick(candidates, svc.load_balancer if svc else "ROUND_ROBIN",
                                     tried)
            if ep is None:
                return self._local(request, ex, 503, "UH", "no healthy upstream")
            tried.append(ep)
            ex.dest = self._labels(table, dest, ep)
            headers["x-envoy-attempt-count"] = str(attempt)
            result = await self._attempt(ep, request, headers, body, policy.per_try_timeout)
            status = result[0].status if isinstance(result, tuple) else None
            self.endpoints.report(ep, status, svc.outlier if svc else None, candidates)
            last = attempt > policy.attempts
            if isinstance(result, Failure):
                if last or not (result.conditions & policy.retry_on):
                    if attempt > 1 and result.conditions & policy.retry_on:
                        ex.flags.append("URX")
                    return self._local(request, ex, result.status, result.flag, result.message)
            else:
                resp, small = result
                if last or not retriable_status(policy, resp.status):
                    if attempt > 1 and retriable_status(policy, resp.status):
                        ex.flags.append("URX")
                    return await self._respond(request, ex, route, dest, resp, small)
                resp.release()
            await asyncio.sleep(self.rng.uniform(0, min(policy.backoff * 2 ** (attempt - 1),
                                                        policy.backoff * 10)))
        raise AssertionError("unreachable: the last attempt always returns")

    async def _attempt(self, ep: Endpoint, request: Incoming, headers: CIMultiDict[str],
                       body: bytes, per_try: float | None
                       ) -> tuple[Response, bytes | None] | Failure:
        """One try: the response (with its body when small) or the Failure that ended it."""
        resp: Response | None = None
        done = False
        ep.in_flight += 1
        try_timer = asyncio.timeout(per_try) if per_try is not None else _NO_TIMER
        try:
            async with try_timer:
                pool, prefix = self._pool(ep)
                if "host" not in headers:
                    headers["Host"] = f"{pool.host}:{pool.port}"
                async with asyncio.timeout(self.idle_timeout):  # until the head is complete
                    resp = await pool.request(request.method, prefix + request.target,
                                              headers, body)
                small = None
                length = resp.content_length
                if length is not None and length <= SMALL_BODY and \
                        not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    small = await resp.read()
                done = True
                return resp, small
        except TimeoutError:
            if try_timer is not _NO_TIMER and try_timer.expired():  # type: ignore[union-attr]
                return Failure("UT", 504, "upstream request timeout", PER_TRY_TIMEOUT)
            # the head wait above, or the idle wait for body bytes in resp.read()
            return Failure("SI", 504, f"stream idle timeout: the upstream sent nothing for "
                           f"{self.idle_timeout:g}s (--stream-idle-timeout)", frozenset())
        except ConnectFailure:
            return Failure("UF", 503, RESET_MSG + "connection failure", CONNECT_FAILURE)
        except ProtocolError as exc:  # Envoy: 502 "protocol error", UPE (istio/istio#36711)
            return Failure("UPE", 502, f"{RESET_MSG}protocol error ({exc})", RESET)
        except (UpstreamError, OSError, ValueError):
            return Failure("UC", 503, RESET_MSG + "connection termination", RESET)
        finally:
            ep.in_flight -= 1
            if resp is not None and not done:
                resp.close()

    async def _respond(self, request: Incoming, ex: Exchange, route: HttpRoute,
                       dest: Destination, resp: Response, small: bytes | None) -> None:
        headers = forwardable(resp.headers.items(), resp.headers.get("connection", ""))
        apply_edit(headers, route.headers.response)
        apply_edit(headers, dest.headers.response)
        headers["x-envoy-upstream-service-time"] = str(int((time.monotonic() - ex.started) * 1000))
        ex.status = resp.status
        if small is not None:
            ex.response_bytes = len(small)
            resp.release()
            return request.respond(resp.status, headers, small,
                                   resp.content_length if request.head_only else None)
        flag = await pipe(request, resp, headers, ex.sent)  # the relay core (gateway/pipe.py)
        if flag:
            ex.flags.append(flag)

    async def close(self) -> None:
        for pool, _ in self._pools.values():
            pool.close()
        await self.mirror.close()
