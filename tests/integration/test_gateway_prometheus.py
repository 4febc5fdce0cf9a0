"""Istio's PromQL against a real Prometheus scraping the gateway: both versions show up."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import require
from tests.fixtures.gateway import StartGateway
from vllm_canary import promserver

pytestmark = pytest.mark.real
QUERY = ('sum by (destination_version) (rate(istio_requests_total{reporter="destination",'
         'destination_service_name="vllm-service"}[1m]))')


async def test_istio_promql_returns_both_versions(start_gateway: StartGateway,
                                                  tmp_path: Path) -> None:
    require(promserver.find_binary() is not None, "Prometheus", promserver.INSTALL_HINT)
    gw = await start_gateway()
    target = f"127.0.0.1:{gw.ports['metrics']}"
    prom = promserver.PrometheusServer(tmp_path / "prom",
                                       [promserver.ScrapeJob("istio-gateway", [target])])
    await asyncio.to_thread(prom.start)
    try:
        found: dict[str, float] = {}
        async with aiohttp.ClientSession() as s:
            for _ in range(60):  # bounded: ~30 s at most
                for i in range(20):
                    headers = {"x-ab-test": "v2"} if i % 10 == 0 else {}
                    async with s.post(gw.url() + "/v1/completions", data="{}",
                                      headers=headers) as resp:
                        assert resp.status == 200
                result = await asyncio.to_thread(prom.query, QUERY)
                found = {r["metric"]["destination_version"]: float(r["value"][1])
                         for r in result}
                if found.get("v1", 0) > 0 and found.get("v2", 0) > 0:
                    break
                await asyncio.sleep(0.5)
        assert set(found) == {"v1", "v2"} and found["v1"] > found["v2"] > 0
        p99 = await asyncio.to_thread(prom.query, (
            "histogram_quantile(0.99, sum by (destination_version, le) "
            "(rate(istio_request_duration_milliseconds_bucket{reporter=\"destination\"}[1m])))"))
        assert {r["metric"]["destination_version"] for r in p99} == {"v1", "v2"}
    finally:
        await asyncio.to_thread(prom.stop)


async def test_exposition_passes_promtool(start_gateway: StartGateway) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool", promserver.INSTALL_HINT)
    gw = await start_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url() + "/v1/completions", data="{}") as resp:
            assert resp.status == 200
        async with s.get(gw.url("metrics") + "/metrics") as resp:
            text = await resp.read()
    out = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                  capture_output=True, timeout=30)
    lines = out.stdout.decode().splitlines() + out.stderr.decode().splitlines()
    # Istio names its duration in milliseconds; we keep Istio's name so its queries work.
    problems = [line for line in lines if ("istio_" in line or "vllm_canary_gateway" in line)
                and 'instead of "milliseconds"' not in line]
    assert not problems, problems
