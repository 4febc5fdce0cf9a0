"""The rollout's shadow reader gets the same served-v1 and shadow-v2 counts from the servers'
real metric classes, scraped directly and through a real Prometheus."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import require
from vllm_canary import promserver
from vllm_canary.procs import free_port
from vllm_canary.rollout.metrics import PrometheusSource, ScrapeSource
from vllm_canary.rollout.shadow import ShadowReader
from vllm_canary.server.metrics import ServerMetrics
from vllm_canary.server.shadow import ShadowMetrics


def registry(version: str) -> CollectorRegistry:
    reg = CollectorRegistry()
    served, shadow = ServerMetrics(reg, version, "m", "sim"), ShadowMetrics(reg, version, "m")
    if version == "v1":
        for i in range(50):
            served.count(500 if i < 2 else 200)
            served.latency.observe(0.2)
            served.ttft.observe(0.05)
    else:
        for i in range(40):
            shadow.record(503 if i < 8 else 200, 0.9, 0.3, 5, 7)
    return reg


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    regs = {v: registry(v) for v in ("v1", "v2")}
    app = web.Application()
    for name, reg in regs.items():
        async def serve(request: web.Request, reg: CollectorRegistry = reg) -> web.Response:
            return web.Response(body=generate_latest(reg), content_type="text/plain",
                                charset="utf-8")
        app.router.add_get(f"/{name}/metrics", serve)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield {"v1": f"127.0.0.1:{port}", "v2": f"127.0.0.1:{port}"}
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def check(snap: dict) -> None:
    served, shadow = snap["served"], snap["shadow"]
    assert (served.requests, served.errors) == (50, 2)  # v1's served traffic only
    assert (shadow.requests, shadow.errors) == (40, 8)  # v2's shadow traffic only
    assert shadow.histograms["latency"].count == 40 and served.histograms["latency"].count == 50
    assert shadow.histograms["latency"].bounds == served.histograms["latency"].bounds
    assert shadow.histograms["ttft"].count == 40


def test_shadow_reader_by_direct_scrape(endpoints: dict[str, str]) -> None:
    src = ScrapeSource(None, {v: f"http://{endpoints[v]}/{v}/metrics" for v in ("v1", "v2")})
    check(ShadowReader(src, "v1", "v2").snapshot())


@pytest.mark.real
def test_shadow_reader_through_prometheus(endpoints: dict[str, str], tmp_path: Path) -> None:
    require(promserver.find_binary() is not None, "Prometheus", promserver.INSTALL_HINT)
    jobs = [promserver.ScrapeJob(v, [endpoints[v]], metrics_path=f"/{v}/metrics")
            for v in ("v1", "v2")]
    with promserver.PrometheusServer(tmp_path / "prom", jobs) as prom:
        reader = ShadowReader(PrometheusSource(prom.url), "v1", "v2")
        deadline = time.monotonic() + 60
        snap: dict = {}
        while time.monotonic() < deadline:
            snap = reader.snapshot()
            if {"served", "shadow"} <= set(snap) and "ttft" in snap["shadow"].histograms:
                break
            time.sleep(0.5)
        check(snap)
