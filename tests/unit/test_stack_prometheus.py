"""The Prometheus config `vllm-canary up` writes: every model-server target carries its
`version` (as the chart's ServiceMonitor puts the pod's label on its targets), the fronts'
own `version` labels win (honor_labels), and vLLM's own servers are scraped with --engine
vllm. The real scrape is proven in tests/integration/test_promql_live.py."""

from __future__ import annotations

import argparse

from vllm_canary.gateway import stack
from vllm_canary.promserver import PrometheusServer, ScrapeJob


def _args(**kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    stack.register(p.add_subparsers())
    return p.parse_args(["up", *[f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]])


def test_fronts_and_gateway_are_scraped_with_versions(tmp_path) -> None:
    jobs = stack.scrape_jobs(_args(), {})
    cfg = PrometheusServer(tmp_path, jobs).config()["scrape_configs"]
    by = {c["job_name"]: c for c in cfg}
    assert set(by) == {"istio-gateway", "vllm-service"}
    assert by["istio-gateway"]["static_configs"] == [{"targets": ["127.0.0.1:15090"],
                                                      "labels": {}}]
    front = by["vllm-service"]
    assert front["honor_labels"] is True
    assert front["static_configs"] == [
        {"targets": ["127.0.0.1:8001"], "labels": {"version": "v1"}},
        {"targets": ["127.0.0.1:8002"], "labels": {"version": "v2"}}]


def test_vllm_children_are_scraped_with_versions(tmp_path) -> None:
    jobs = stack.scrape_jobs(_args(engine="vllm"), {"v1": 41001, "v2": 41002})
    engine = next(j for j in jobs if j.name == "vllm-engine")
    assert engine.static_configs() == [
        {"targets": ["127.0.0.1:41001"], "labels": {"version": "v1"}},
        {"targets": ["127.0.0.1:41002"], "labels": {"version": "v2"}}]
    assert not engine.honor_labels  # vLLM's series have no `version`: the target's applies


def test_the_vllm_child_port_is_passed_to_serve() -> None:
    argv = stack._server_argv(_args(engine="vllm", model_v1="/m1",
                                    vllm_args="--max-model-len 256 --enforce-eager"),
                              "v1", 8101, 8001, 41001)
    assert argv[-6:] == ["--", "--max-model-len", "256", "--enforce-eager", "--port", "41001"]


def test_targets_without_labels_share_one_group() -> None:
    job = ScrapeJob("x", ["a:1", "b:2", "c:3"], labels={"team": "t"},
                    target_labels={"b:2": {"version": "v2"}})
    assert job.static_configs() == [
        {"targets": ["b:2"], "labels": {"team": "t", "version": "v2"}},
        {"targets": ["a:1", "c:3"], "labels": {"team": "t"}}]
