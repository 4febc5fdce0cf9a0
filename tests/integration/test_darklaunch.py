"""Dark launch as a user runs it: `up --mirror-v2 100` with all traffic on v1 gives clients
only v1's answers, v2's front logs a shadow answer for every logged request id (and counts it
apart from served traffic), and `shadow report` counts the pairs; a slow v2 in shadow delays no
client, and the mirrors it cannot take are dropped and counted."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp

from tests.fixtures.gateway import TOKEN, FakeUpstream, StartGateway
from tests.fixtures.rollout import cli
from vllm_canary.dataloop.logs import ReadStats, read_records
from vllm_canary.gateway.adminclient import AdminClient
from vllm_canary.rollout.metrics.scrape import scrape

N = 20


def _post(url: str, prompt: str) -> tuple[str, dict]:
    body = json.dumps({"prompt": prompt, "max_tokens": 8}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=body),
                                timeout=10) as resp:
        return resp.headers["x-model-version"], json.load(resp)


def _records(log_dir: Path) -> list[dict]:
    files = sorted(log_dir.glob("requests-*.jsonl"))
    return list(read_records(files, ReadStats()))


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_up_mirror_v2_shadow_log_metrics_and_report(up_factory, tmp_path: Path) -> None:
    env, st = up_factory("--mirror-v2", "100", "--no-prometheus")
    AdminClient(st.admin_url, st.admin_token).set_weights({"v1": 100, "v2": 0})
    versions = [_post(st.gateway_url, f"question number {i}")[0] for i in range(N)]
    assert versions == ["v1"] * N  # every client answer is v1's
    log_dir = tmp_path / "logs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # mirrors are fire and forget: they land a bit later
        recs = _records(log_dir)
        served = {r["request_id"] for r in recs if r["version"] == "v1" and not r.get("shadow")}
        shadow = {r["request_id"]: r for r in recs if r["version"] == "v2" and r.get("shadow")}
        if len(served) == N and served <= set(shadow):
            break
        time.sleep(0.2)
    assert len(served) == N and served <= set(shadow), (len(served), len(shadow))
    assert all(shadow[rid]["completion"] and shadow[rid]["status"] == 200 for rid in served)
    assert not [r for r in recs if r["version"] == "v2" and not r.get("shadow")]

    v2 = scrape(st.servers["v2"].metrics_url)
    assert _value(v2, "vllm_shadow_requests_total", status="200") == N
    assert _value(v2, "vllm_requests_total") == 0  # served series: users' experience only
    gw = scrape(st.gateway_metrics_url)
    assert _value(gw, "istio_requests_total", destination_version="v2") == 0

    out = tmp_path / "report"
    run = subprocess.run(cli("shadow", "report", "--logs", str(log_dir), "--out", str(out)),
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs"], summary["unpaired"]) == (N, 0)
    assert summary["candidate_error_rate"]["rate"] == 0.0
    assert (out / "report.html").is_file() and len((out / "pairs.csv").read_text().splitlines()) \
        == N + 1


async def _latencies(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/completions", data=b'{"prompt":"x"}') as resp:
                await resp.read()
                assert resp.headers["x-model-version"] == "v1"
            out.append(time.perf_counter() - t0)
    return out


async def test_slow_shadow_delays_no_client_and_drops_are_counted(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(max_mirrors_in_flight=3)
    admin = gw.url("admin")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.put(admin + "/weights", json={"weights": {"v1": 100, "v2": 0}}) as r:
            assert r.status == 200
        before = await _latencies(gw.url(), 30)
        upstreams["v2"].delay = 2.0  # v2 is slow while shadowed
        async with s.put(admin + "/mirror", json={"subset": "v2", "percent": 100}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["mirror"] == {"subset": "v2", "percent": 100.0}
        during = await _latencies(gw.url(), 30)
        async with s.put(admin + "/mirror", json={"subset": "v2", "percent": 101}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "percent"
    # Fire and forget: the client's median latency on v1 is unchanged within noise (a slow
    # mirror awaited inline would add 2 s to each).
    assert statistics.median(during) < statistics.median(before) + 0.05, (before, during)
    assert max(during) < 1.0
    dropped = sum(s.value for m in gw.registry.collect() for s in m.samples
                  if s.name == "vllm_canary_gateway_mirror_dropped_total"
                  and s.labels.get("destination_version") == "v2")
    assert dropped == 30 - 3  # three copies in flight at most; the rest dropped and counted
    assert len(upstreams["v2"].requests) == 3
    await asyncio.sleep(0)
