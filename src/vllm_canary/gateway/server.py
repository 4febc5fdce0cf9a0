"""Run the gateway: the proxy, Istio telemetry and the admin API on their own ports, the
routes-file watcher and the upstream health checks, until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vllm_canary import aio
from vllm_canary.errors import UserError
from vllm_canary.gateway.admin import admin_app
from vllm_canary.gateway.endpoints import (
    Endpoint,
    Endpoints,
    load_endpoints_file,
    parse_upstream,
)
from vllm_canary.gateway.h1server import H1Server
from vllm_canary.gateway.proxy import Proxy
from vllm_canary.gateway.routing import weights_of
from vllm_canary.gateway.settings import GatewaySettings, admin_token, is_loopback
from vllm_canary.gateway.store import RouteStore, Snapshot, default_routes_path
from vllm_canary.gateway.telemetry import Telemetry
from vllm_canary.server.httperrors import JsonErrorsRunner

log = logging.getLogger("vllm_canary.gateway")


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats/prometheus", metrics)  # where Istio's sidecar serves them
    return app


def _reason(exc: OSError) -> str:
    return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()


class Gateway:
    """One gateway; `async with Gateway(settings) as gw:` in tests, `run()` from the CLI."""

    def __init__(self, settings: GatewaySettings,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.token, self.token_file = admin_token(settings)
        self.telemetry = Telemetry(self.registry)
        endpoints: list[Endpoint] = [parse_upstream(u) for u in settings.upstream]
        if settings.endpoints is not None:
            endpoints += load_endpoints_file(settings.endpoints)
        self.endpoints = Endpoints(endpoints)
        self.store = RouteStore(settings.routes or default_routes_path(), self._on_routes)
        self._on_routes(self.store.snapshot)
        self._runners: list[web.AppRunner] = []
        self._front: H1Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.ports: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None
        self.proxy: Proxy | None = None

    def _on_routes(self, snap: Snapshot) -> None:
        self.telemetry.routes_generation.set(snap.generation)
        self.telemetry.route_weight.clear()
        for vhost in snap.table.virtual_hosts:
            for route in vhost.routes:
                for subset, weight in weights_of(route).items():
                    self.telemetry.route_weight.labels(vhost.name, route.name, subset).set(weight)

    def _on_health(self, ep: Endpoint) -> None:
        state = "healthy" if ep.healthy else f"unhealthy ({ep.last_error})"
        log.warning("upstream %s (%s) is %s", ep.url, ep.workload, state)
        self.telemetry.upstream_healthy.labels(ep.url, ep.workload, ep.version).set(
            1 if ep.healthy else 0)

    async def _listen(self, name: str, app: web.Application, host: str, port: int,
                      **kwargs: Any) -> None:
        # malformed HTTP on the admin and metrics ports is a JSON 4xx too, not a traceback
        runner = JsonErrorsRunner(app, access_log=log if self.settings.access_log else None,
                                  **kwargs)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise UserError(f"{name}: cannot listen on {host}:{port}: {_reason(exc)}") from None
        self.ports[name] = int(runner.addresses[0][1])

    async def start(self) -> Gateway:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, connect=s.connect_timeout,
                                          sock_read=s.stream_idle_timeout),
        )
        rng = random.Random(s.seed) if s.seed is not None else random.Random()
        self.proxy = Proxy(self.store, self.endpoints, self.telemetry, self.session, rng,
                           connect_timeout=s.connect_timeout, idle_timeout=s.stream_idle_timeout,
                           max_mirrors_in_flight=s.max_mirrors_in_flight,
                           access_log=log if s.access_log else None)
        for ep in self.endpoints.all:
            self.telemetry.upstream_healthy.labels(ep.url, ep.workload, ep.version).set(1)
        try:
            if s.health_path:
                self._tasks.append(asyncio.create_task(self.endpoints.health_loop(
                    self.session, s.health_path, s.health_interval, on_change=self._on_health)))
            self._tasks.append(asyncio.create_task(self.store.watch(s.watch_interval)))
            self._front = H1Server(self.proxy.handle, s.max_request_bytes)
            try:
                await self._front.start(s.host, s.port)
            except OSError as exc:
                raise UserError(f"gateway: cannot listen on {s.host}:{s.port}: "
                                f"{_reason(exc)}") from None
            self.ports["gateway"] = self._front.port
            await self._listen("metrics", metrics_app(self.registry), s.host, s.metrics_port)
            if not is_loopback(s.admin_host):  # allowed by --admin-allow-remote
                log.warning("the admin API listens on %s, beyond this machine "
                            "(--admin-allow-remote): anyone who can reach it with the token "
                            "can change routing", s.admin_host)
            await self._listen("admin", admin_app(self.store, self.token), s.admin_host,
                               s.admin_port)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._front is not None:
            await self._front.close()
            self._front = None
        if self.proxy is not None:
            await self.proxy.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, name: str = "gateway") -> str:
        host = self.settings.admin_host if name == "admin" else self.settings.host
        return f"http://{host}:{self.ports[name]}"


async def run(settings: GatewaySettings) -> int:
    """The `vllm-canary gateway` command: serve until SIGTERM/SIGINT."""
    gateway = Gateway(settings)
    async with gateway:
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's scans, which otherwise show up as latency spikes.
        gc.collect()
        gc.freeze()
        log.warning("gateway on %s routing %s (%s), metrics %s/metrics, admin %s",
                    gateway.url(), gateway.store.path,
                    ", ".join(f"{k}={v}" for k, v in gateway.store.current_weights().items()),
                    gateway.url("metrics"), gateway.url("admin"))
        for ep in gateway.endpoints.all:
            log.warning("upstream %s -> %s", ",".join(f"{k}={v}" for k, v in ep.labels.items()),
                        ep.url)
        if gateway.token_file is not None:  # the path, never the token (logs get shared)
            log.warning("admin token (random) written to %s", gateway.token_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0


def main(settings: GatewaySettings) -> int:
    """Run on uvloop when installed (about twice asyncio's throughput for a proxy)."""
    return aio.run(run(settings))
