"""The front of a vLLM that also serves LoRA versions: one relay front per version, one vLLM.

A request whose `x-canary-version` header names an adapter version (the VirtualService sets it
on that version's route) gets its `model` field rewritten to the adapter's served name (the
only change to a body; server/lora.py) and is relayed by that version's own RelayFront, so its
metrics carry `version=<it>` and `model=<served name>`, its request-log lines go to that
version's file, and its answer says `x-model-version: <it>`. Without the header (or naming the
base) a request is the base's, untouched. `/metrics` merges every version's series.

Admin API (bearer token `$VLLM_CANARY_ADMIN_TOKEN`; refused when it is unset):
  GET    /vllm-canary/lora            -> {"base", "base_model", "max_lora_rank", "adapters"}
  POST   /vllm-canary/lora            {"version", "path", "name"?, "error_rate"?} -> 201
  DELETE /vllm-canary/lora/<version>  -> 200 the adapter
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from vllm_canary.errors import UserError
from vllm_canary.gateway.h1server import Incoming
from vllm_canary.server.api import ApiError
from vllm_canary.server.lora import (
    MODEL_PATHS,
    VERSION_HEADER,
    Adapter,
    LoraError,
    LoraManager,
    lora_plan,
    rewrite_model,
)
from vllm_canary.server.observe import GENERATION
from vllm_canary.server.relay import RelayFront
from vllm_canary.server.requestlog import RequestLog
from vllm_canary.server.settings import ServeSettings

log = logging.getLogger("vllm_canary.server")

ADMIN_PATH = "/vllm-canary/lora"
# vLLM's own runtime LoRA routes: open to anyone who reaches vLLM once runtime updating is on
# (vLLM's docs call that risky in production), so the front never relays them.
VLLM_LORA_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
TOKEN_ENV = "VLLM_CANARY_ADMIN_TOKEN"


class _Shared:
    """The base's engine seen by an adapter version's front: same child, same readiness;
    starting and closing it stay the base front's job."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.name = engine.name

    @property
    def base_url(self) -> str:
        return str(self._engine.base_url)

    def ready(self) -> bool:
        return bool(self._engine.ready())

    def model_names(self) -> list[str]:
        return list(self._engine.model_names())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class _Merged:
    """A collector that yields the families of several registries, same-named ones merged
    (one HELP/TYPE per family, as the exposition format requires)."""

    def __init__(self, front: LoraFront) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for registry in self.front.registries():
            for fam in registry.collect():
                have = families.get(fam.name)
                if have is None:
                    have = families[fam.name] = Metric(fam.name, fam.documentation, fam.type,
                                                       fam.unit)
                have.samples.extend(fam.samples)
        yield from families.values()


def parse_error_rates(items: list[str]) -> dict[str, float]:
    """`VERSION=RATE` items (fault injection for adapter versions) -> {version: rate}."""
    rates: dict[str, float] = {}
    for item in items:
        version, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not sep or not version or not 0.0 <= rate <= 1.0:
            raise UserError(f"--lora-error-rate {item!r}: expected VERSION=RATE with RATE "
                            "from 0 to 1, e.g. v2=0.3")
        rates[version] = rate
    return rates


class LoraFront:
    """The base version's RelayFront plus one RelayFront per loaded adapter version; the
    same interface run.py uses (start, handle, handle_metrics, model, draining, close)."""

    def __init__(self, settings: ServeSettings, base: RelayFront) -> None:
        self.settings = settings
        self.base = base
        self.plan = lora_plan(settings)  # checks every --lora folder before vLLM starts
        self.manager = LoraManager(settings.version, settings.served_model_name(),
                                   max_rank=self.plan.max_rank)
        self.fronts: dict[str, RelayFront] = {}
        self.error_rates = parse_error_rates(settings.lora_error_rate)
        self._rng = random.Random(settings.seed)
        self._token = os.environ.get(TOKEN_ENV) or ""
        self._loading = True
        self._loader: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Merged(self))  # type: ignore[arg-type]

    # -- the interface run.py uses -----------------------------------------------------------
    @property
    def model(self) -> str:
        return self.base.model

    @property
    def draining(self) -> bool:
        return self.base.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.base.draining = value
        for front in self.fronts.values():
            front.draining = value

    async def start(self) -> None:
        await self.base.start()
        self._loader = asyncio.create_task(self._load_at_start(), name="lora-start")

    async def close(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        for front in list(self.fronts.values()):
            await front.close()
        await self.base.close()

    def registries(self) -> list[CollectorRegistry]:
        return [self.base.registry, *(f.registry for f in list(self.fronts.values()))]

    async def _load_at_start(self) -> None:
        """Once vLLM is ready, load the --lora adapters; the front is ready after that. A
        failure takes the server down (exit 1), like a model that does not load."""
        engine = self.base.engine
        try:
            await engine.wait_ready()
            self.manager.base_url = engine.base_url
            for spec in self.plan.adapters:
                await self._add(await self.manager.load(spec.version, str(spec.path),
                                                         spec.name))
        except Exception as exc:  # reported, then the server exits (engine.failed)
            message = exc.message if isinstance(exc, LoraError) else repr(exc)
            log.error("LoRA adapters did not load: %s", message)
            failed = getattr(engine, "failed", None)
            if failed is not None:
                failed.set()
            return
        self._loading = False
        names = ", ".join(f"{a.version}={a.name}" for a in self.manager.table.adapters.values())
        log.warning("LoRA versions on %s: %s", self.settings.version, names or "none yet")

    async def _add(self, adapter: Adapter) -> RelayFront:
        s = self.settings
        settings = s.model_copy(update={"version": adapter.version, "model_name": adapter.name})
        request_log = None
        if self.base.request_log is not None and s.log_dir is not None:
            request_log = RequestLog(s.log_dir, adapter.version, redact=s.log_redact,
                                     sample_rate=s.log_sample_rate)
        front = RelayFront(settings, _Shared(self.base.engine),  # type: ignore[arg-type]
                           request_log=request_log, utilization=self.base.utilization)
        await front.start()
        self.fronts[adapter.version] = front
        return front

    # -- requests ----------------------------------------------------------------------------
    def _error(self, inc: Incoming, status: int, message: str, param: str | None = None,
               version: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status)
        body = ApiError(status, message, kind, param, code).body()
        inc.respond(status, {"content-type": "application/json",
                             "x-model-version": version or self.settings.version},
                    orjson.dumps(body))

    async def handle_metrics(self, inc: Incoming) -> None:
        """GET /metrics: every version's series (the base's front answers anything else)."""
        if inc.path != "/metrics" or inc.method not in ("GET", "HEAD"):
            return await self.base.handle_metrics(inc)
        if self.base.metrics is not None:
            self.base.metrics.ready.set(1 if self._ready() else 0)
        body = await asyncio.to_thread(generate_latest, self.registry)
        inc.respond(200, {"content-type": CONTENT_TYPE_LATEST,
                          "x-model-version": self.settings.version}, body)

    def _ready(self) -> bool:
        return not self._loading and self.base.engine.ready() and not self.base.draining

    async def handle(self, inc: Incoming) -> None:
        if inc.path == ADMIN_PATH or inc.path.startswith(ADMIN_PATH + "/"):
            return await self._admin(inc)
        if inc.method in ("GET", "HEAD") and inc.path == "/metrics":
            return await self.handle_metrics(inc)
        if inc.path in VLLM_LORA_ROUTES:  # runtime updating is on: not for any client
            return self._error(inc, 403, f"{inc.path} is not relayed: adapters are versions "
                               "here; use `vllm-canary lora load|unload` (admin API "
                               f"{ADMIN_PATH})")
        if inc.method in ("GET", "HEAD") and inc.path == "/health" and self._loading:
            return self._error(inc, 503, "the model server is loading its LoRA adapters")
        try:
            adapter = self.manager.table.resolve(inc.lower.get(VERSION_HEADER))
        except LoraError as exc:
            return self._error(inc, exc.status, exc.message, exc.param)
        if adapter is None:
            return await self.base.handle(inc)
        front = self.fronts.get(adapter.version)
        if front is None:  # unloaded between resolve and here
            return self._error(inc, 404, f"version {adapter.version} was just unloaded",
                               VERSION_HEADER)
        if inc.method == "POST" and inc.path in MODEL_PATHS and inc.body and not inc.too_large:
            inc.body = rewrite_model(inc.body, adapter.name)
        rate = self.error_rates.get(adapter.version, 0.0)
        if rate and inc.path in GENERATION and self._rng.random() < rate:
            return self._inject(inc, front, adapter)
        return await front.handle(inc)

    def _inject(self, inc: Incoming, front: RelayFront, adapter: Adapter) -> None:
        """A failure injected at the front (--lora-error-rate), counted as the version's."""
        started = time.perf_counter()
        self._error(inc, 500, f"injected failure for {adapter.version} (--lora-error-rate)",
                    version=adapter.version)
        if front.metrics is not None:
            front.metrics.record(500, time.perf_counter() - started, None, None, None)
            front.metrics.count_api(inc.path, 500)

    # -- admin API ---------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        return {**self.manager.table.view(), "base_model": self.base.model,
                "max_lora_rank": self.plan.max_rank, "loading": self._loading}

    async def _admin(self, inc: Incoming) -> None:
        if not self._token:
            return self._error(inc, 403, f"the LoRA admin API is off: start the server with "
                               f"${TOKEN_ENV} set")
        given = inc.lower.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return self._error(inc, 401, "missing or wrong bearer token", "authorization")
        rest = inc.path[len(ADMIN_PATH):].strip("/")
        try:
            if inc.method == "GET" and not rest:
                return self._json(inc, 200, self.view())
            if inc.method == "POST" and not rest:
                return await self._admin_load(inc)
            if inc.method == "DELETE" and rest:
                adapter = await self.manager.unload(rest)
                front = self.fronts.pop(adapter.version, None)
                if front is not None:  # let answers in flight finish before its pool closes
                    asyncio.get_running_loop().call_later(
                        30, lambda f=front: asyncio.ensure_future(f.close()))
                return self._json(inc, 200, adapter.__dict__)
        except LoraError as exc:
            return self._error(inc, exc.status, exc.message, exc.param)
        return self._error(inc, 405 if not rest or inc.method != "GET" else 404,
                           f"{inc.method} {inc.path}: use GET or POST {ADMIN_PATH}, or "
                           f"DELETE {ADMIN_PATH}/<version>")

    async def _admin_load(self, inc: Incoming) -> None:
        try:
            data = orjson.loads(inc.body)
        except orjson.JSONDecodeError:
            data = None
        rate = data.get("error_rate") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("version"), str) or \
                not isinstance(data.get("path"), str) or \
                not isinstance(data.get("name"), str | None) or not (
                    rate is None or (isinstance(rate, int | float) and not isinstance(rate, bool)
                                     and 0 <= rate <= 1)):
            raise LoraError(400, 'expected {"version": "v3", "path": "/abs/adapter", '
                            '"name": optional served name, "error_rate": optional 0..1}')
        if self._loading:
            raise LoraError(503, "the server is still starting; retry when /health is ok")
        adapter = await self.manager.load(data["version"], data["path"], data.get("name"))
        try:
            await self._add(adapter)
        except Exception:
            with contextlib.suppress(LoraError):
                await self.manager.unload(adapter.version)
            raise
        if rate is not None:  # fault injection for canary tests, as --lora-error-rate
            self.error_rates[adapter.version] = float(rate)
        self._json(inc, 201, adapter.__dict__)

    def _json(self, inc: Incoming, status: int, body: Any) -> None:
        inc.respond(status, {"content-type": "application/json",
                             "x-model-version": self.settings.version}, orjson.dumps(body))
