"""Both metric sources read the same telemetry: the gateway's real Istio metrics (its
Telemetry class) and server-style histograms, served on loopback; once scraped directly and
once through a real Prometheus server with PromQL. They must agree, version by version."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tests.conftest import require
from vllm_canary import promserver
from vllm_canary.procs import free_port
from vllm_canary.rollout.metrics import PrometheusSource, ScrapeSource, Snapshot

SERVICE = "vllm-service.default.svc.cluster.local"
TRAFFIC = {"v1": (180, 2), "v2": (20, 3)}  # requests, of which 5xx


def gateway_registry() -> CollectorRegistry:
    telemetry = pytest.importorskip("vllm_canary.gateway.telemetry")
    reg = CollectorRegistry()
    tel = telemetry.Telemetry(reg)
    for version, (n, errors) in TRAFFIC.items():
        dest = telemetry.DestinationLabels.of(SERVICE, version)
        for i in range(n):
            slow = 0.4 if version == "v2" else 0.1
            tel.record(dest, 503 if i < errors else 200, [], slow + i / 10000, 10, 10)
    tel.upstream_healthy.labels("http://127.0.0.1:1", "vllm-v1", "v1").set(1)
    tel.upstream_healthy.labels("http://127.0.0.1:2", "vllm-v2", "v2").set(0)
    return reg


def server_registry(version: str) -> CollectorRegistry:
    reg = CollectorRegistry()
    ttft = Histogram("vllm_time_to_first_token_seconds", "TTFT", ["version", "model"],
                     buckets=(0.05, 0.1, 0.25, 0.5, 1.0), registry=reg)
    itl = Histogram("vllm_token_latency_seconds", "ITL", ["version", "model"],
                    buckets=(0.01, 0.02, 0.05, 0.1), registry=reg)
    for i in range(TRAFFIC[version][0]):
        ttft.labels(version, "m").observe(0.08 if version == "v1" else 0.3)
        itl.labels(version, "m").observe(0.015 + i / 100000)
    return reg


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    regs = {"gw": gateway_registry(), "v1": server_registry("v1"), "v2": server_registry("v2")}
    app = web.Application()
    for name, reg in regs.items():
        async def serve(request: web.Request, reg: CollectorRegistry = reg) -> web.Response:
            return web.Response(body=generate_latest(reg),
                                content_type="text/plain", charset="utf-8")
        app.router.add_get(f"/{name}/metrics", serve)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield {name: f"127.0.0.1:{port}" for name in regs} | {"port": str(port)}
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def check(snap: Snapshot) -> None:
    for version, (n, errors) in TRAFFIC.items():
        st = snap[version]
        assert (st.requests, st.errors) == (n, errors)
        assert st.histograms["latency"].count == n
        assert st.histograms["ttft"].count == n
        assert st.histograms["itl"].count == n
    lat = snap["v2"].histograms["latency"]
    assert lat.cumulative[lat.bounds.index(250.0)] == 0  # every v2 request took >= 400 ms
    assert snap["v1"].up is True and snap["v2"].up is False


def test_direct_scrape(endpoints: dict[str, str]) -> None:
    src = ScrapeSource(f"http://{endpoints['gw']}/gw/metrics",
                       {"v1": f"http://{endpoints['v1']}/v1/metrics",
                        "v2": f"http://{endpoints['v2']}/v2/metrics"})
    check(src.snapshot())


def test_a_dead_server_marks_its_version_down(endpoints: dict[str, str]) -> None:
    src = ScrapeSource(None, {"v1": f"http://{endpoints['v1']}/v1/metrics",
                              "v2": f"http://127.0.0.1:{free_port()}/metrics"})
    snap = src.snapshot()
    assert snap["v2"].up is False and snap["v1"].histograms["ttft"].count == TRAFFIC["v1"][0]


@pytest.mark.real
def test_prometheus_agrees_with_direct_scrape(endpoints: dict[str, str], tmp_path: Path) -> None:
    require(promserver.find_binary() is not None, "Prometheus", promserver.INSTALL_HINT)
    jobs = [promserver.ScrapeJob(name, [endpoints[name]], metrics_path=f"/{name}/metrics")
            for name in ("gw", "v1", "v2")]
    with promserver.PrometheusServer(tmp_path / "prom", jobs) as prom:
        deadline = time.monotonic() + 60
        snap: Snapshot = {}
        while time.monotonic() < deadline:
            # A fresh source's first snapshot is the level of every counter (what a window
            # starts from); later ones add the increases since it.
            snap = PrometheusSource(prom.url).snapshot()
            if all(v in snap and "itl" in snap[v].histograms and snap[v].up is not None
                   for v in TRAFFIC):
                break
            time.sleep(0.5)
        check(snap)
