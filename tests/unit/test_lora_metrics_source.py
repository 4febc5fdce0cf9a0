"""For LoRA versions the rollout reads per-version traffic from the fronts' own series:
Istio's destination_version is the pod's label, the base's for both versions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from vllm_canary import stackstate
from vllm_canary.rollout.metrics import prometheus
from vllm_canary.rollout.targets import add_target_flags, build_source, target_from_args


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_target_flags(p)
    return p.parse_args(list(argv))


def _lora_stack(path: Path, prometheus_url: str | None = None) -> None:
    stackstate.save(stackstate.StackState(
        pid=os.getpid(), gateway_url="http://127.0.0.1:8080",
        gateway_metrics_url="http://127.0.0.1:15090/metrics", admin_url="http://127.0.0.1:15000",
        admin_token="tok", routes_file="routes-lora.yaml",
        servers={"v1": stackstate.ServerInfo(url="http://127.0.0.1:8101",
                                             metrics_url="http://127.0.0.1:8001/metrics")},
        prometheus_url=prometheus_url, lora={"v2": "v1"}), path)


def test_a_lora_stack_is_read_from_the_fronts(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CANARY_STATE", str(tmp_path / "stack.json"))
    _lora_stack(tmp_path / "stack.json")
    assert target_from_args(parse())["source"] == {
        "kind": "scrape", "gateway": None, "servers": {"v1": "http://127.0.0.1:8001/metrics"}}
    _lora_stack(tmp_path / "stack.json", "http://127.0.0.1:9090")
    source = target_from_args(parse())["source"]
    assert source == {"kind": "prometheus", "url": "http://127.0.0.1:9090", "traffic": "front"}
    assert build_source({"source": source, "actuator": {}}).traffic == "front"
    explicit = target_from_args(parse("--prometheus", "http://p:9090", "--admin-url",
                                      "http://a", "--admin-token", "t",
                                      "--version-metrics", "front"))["source"]
    assert explicit["traffic"] == "front"


@pytest.mark.parametrize(("traffic", "v2_requests"), [("istio", 0), ("front", 20)])
def test_prometheus_source_traffic_switch(monkeypatch, traffic, v2_requests):
    """The same Prometheus answers: Istio puts all 100 requests on v1 (both versions run on
    v1's pods); the fronts' vllm_requests_total says 80 v1 and 20 v2."""
    def fake_query(url: str, expr: str, timeout: float) -> list[dict]:
        if "istio_requests_total" in expr:
            return [{"metric": {"destination_version": "v1", "response_code": "200",
                                "reporter": "destination",
                                "destination_service_name": "vllm-service"},
                     "value": [0, "100"]}]
        if "vllm_requests_total" in expr:
            return [{"metric": {"version": v, "status": "200"}, "value": [0, n]}
                    for v, n in (("v1", "80"), ("v2", "20"))]
        return []

    monkeypatch.setattr(prometheus, "promql", fake_query)
    source = prometheus.PrometheusSource("http://p", traffic=traffic, now=lambda: 1000.0)
    snap = source.snapshot()
    got = {v: s.requests for v, s in snap.items() if s.requests}
    assert got.get("v2", 0) == v2_requests
    assert sum(got.values()) == 100
