"""`vllm-canary analyze --serve` as Argo's `web` metric provider reads it, and the analyzer's
quality and custom-PromQL metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.rollout import FakeActuator, FakeSource
from vllm_canary.analysis.verdict import Verdict
from vllm_canary.rollout.analyzer import Analyzer, quality_result
from vllm_canary.rollout.serve import AnalysisService
from vllm_canary.rollout.strategy import AnalysisSpec, CustomMetric


def service(error_v2: float, polls: int) -> AnalysisService:
    spec = AnalysisSpec(metrics=["error-rate", "latency-p95"], min_samples=20)
    act = FakeActuator(weights={"v1": 50, "v2": 50})
    src = FakeSource(act, error_rate={"v1": 0.0, "v2": error_v2})
    # A poll interval far beyond the test: the app's loop polls once at start and never
    # between a /reset and the next GET, whatever the machine's load.
    svc = AnalysisService(lambda: Analyzer(spec, "v1", "v2"), src, 3600.0)
    for _ in range(polls):
        svc.poll()
    return svc


async def test_serves_verdicts_per_metric_and_all(aiohttp_client) -> None:
    client = await aiohttp_client(service(0.0, 10).app())
    resp = await client.get("/analyze?metric=error-rate")
    body = await resp.json()
    assert resp.status == 200 and body["verdict"] == "pass" and body["metric"] == "error-rate"
    body = await (await client.get("/analyze")).json()
    assert body["verdict"] == "pass" and [m["metric"] for m in body["metrics"]] == [
        "error-rate", "latency-p95"]
    resp = await client.get("/analyze?metric=p99")
    assert resp.status == 404 and "error-rate" in (await resp.json())["error"]["message"]


async def test_fail_and_inconclusive_and_reset(aiohttp_client) -> None:
    client = await aiohttp_client(service(0.5, 10).app())
    assert (await (await client.get("/analyze?metric=error-rate")).json())["verdict"] == "fail"
    await client.post("/reset")
    body = await (await client.get("/analyze?metric=error-rate")).json()
    assert body["verdict"] == "inconclusive" and "canary samples" in body["reason"]


def test_no_data_is_inconclusive_never_fail() -> None:
    svc = service(0.0, 0)
    assert [r.verdict for r in svc.analyzer.results()] == [Verdict.INCONCLUSIVE] * 2


def test_quality_reads_the_latest_decision(tmp_path: Path) -> None:
    assert quality_result(tmp_path).verdict is Verdict.INCONCLUSIVE
    for day, decision in (("20260101", "promote"), ("20260102", "rollback")):
        (tmp_path / day).mkdir()
        (tmp_path / day / "decision.json").write_text(
            json.dumps({"decision": decision, "reasons": ["v2 rated lower"]}))
    r = quality_result(tmp_path)
    assert r.verdict is Verdict.FAIL and "20260102" in r.reason and "rated lower" in r.reason
    assert quality_result(tmp_path / "20260101").verdict is Verdict.PASS


def test_custom_promql_metric_compares_canary_with_baseline() -> None:
    values = {'x{version="v1"}': 1.0, 'x{version="v2"}': 1.5}
    spec = AnalysisSpec(metrics=[CustomMetric(name="x", query='x{version="$version"}',
                                              maxIncrease=0.2)])
    r = Analyzer(spec, "v1", "v2", query=values.get).results()[0]
    assert r.verdict is Verdict.FAIL and (r.canary, r.baseline) == (1.5, 1.0)
    values['x{version="v2"}'] = 1.1
    assert Analyzer(spec, "v1", "v2", query=values.get).results()[0].verdict is Verdict.PASS
    assert Analyzer(spec, "v1", "v2").results()[0].verdict is Verdict.INCONCLUSIVE


def test_a_port_it_cannot_serve_on_is_one_line(capsys) -> None:
    import socket

    from vllm_canary.cli import main

    scrape = ["--scrape", "http://127.0.0.1:9/metrics"]
    assert main(["analyze", "--serve", "--port", "99999", *scrape]) == 2
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        assert main(["analyze", "--serve", "--port", port, *scrape]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not a TCP port" in err[0] and "in use" in err[1]


class Appearing:
    """v2 has no series until its weight leaves 0: its first counts are all new traffic."""

    def __init__(self) -> None:
        from vllm_canary.rollout.metrics.base import VersionStats

        self.snaps = [{"v1": VersionStats(1000, 0)},
                      {"v1": VersionStats(1090, 0), "v2": VersionStats(10, 4)},
                      {"v1": VersionStats(1180, 0), "v2": VersionStats(20, 8)}]

    def snapshot(self) -> dict:
        return self.snaps.pop(0)

    def describe(self) -> str:
        return "appearing"


def test_a_version_first_seen_mid_analysis_counts_from_its_first_requests() -> None:
    spec = AnalysisSpec(metrics=["error-rate"])
    svc = AnalysisService(lambda: Analyzer(spec, "v1", "v2"), Appearing(), 3600.0)
    for _ in range(3):
        svc.poll()
    test = svc.analyzer.tests["error-rate"]
    assert (test.requests_c, test.events_c, test.requests_b) == (20, 8, 180)
