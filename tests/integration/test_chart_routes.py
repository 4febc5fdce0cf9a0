"""The chart's VirtualService/DestinationRule are what the local gateway executes, and the
gateway's routing of them gives 90/10 and header A/B."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources

import pytest
import yaml

from vllm_canary.k8s.render import to_yaml

VARIANTS = {
    "defaults": {},
    "mirror": {"routing": {"mirror": {"enabled": True, "percentage": 50}}},
    "outlier-timeout-retries": {"routing": {
        "outlierDetection": {"enabled": True}, "timeout": "300s",
        "retries": {"attempts": 2, "perTryTimeout": "120s", "retryOn": "connect-failure,503"}}},
    "three-versions": {"versions": [{"name": "v1", "weight": 80}, {"name": "v2", "weight": 10},
                                    {"name": "v3", "weight": 10}]},
    "no-gateway": {"routing": {"gateway": {"enabled": False}}},
}


def _routing_objects(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs
            if d and d.get("kind") in ("VirtualService", "DestinationRule")}


def test_rendered_routes_equal_the_local_stack_routes_file(render):
    shipped = resources.files("vllm_canary").joinpath("data/routes.yaml").read_text()
    local = _routing_objects(list(yaml.safe_load_all(shipped)))
    chart = _routing_objects([m.obj for m in render().manifests])
    assert set(local) == set(chart) == {("VirtualService", "vllm"), ("DestinationRule", "vllm")}
    for key, obj in chart.items():
        assert obj["apiVersion"] == local[key]["apiVersion"], key
        assert obj["spec"] == local[key]["spec"], key


def _table(rendered):
    from vllm_canary.gateway.compiler import compile_table
    from vllm_canary.gateway.istio import parse_documents

    return compile_table(parse_documents(to_yaml(rendered), "chart"))


def _route_many(table, headers: dict[str, str], n: int, seed: int = 7) -> Counter:
    from vllm_canary.gateway.routing import Request, decide

    rng = random.Random(seed)
    req = Request("POST", "/v1/completions", "vllm-service.default.svc.cluster.local", headers)
    return Counter(decide(table, req, rng).destination.subset for _ in range(n))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gateway_accepts_every_routing_variant(variant, render):
    table = _table(render(VARIANTS[variant]))
    assert table.virtual_hosts


def test_gateway_executes_90_10_and_header_ab(render):
    table = _table(render())
    n = 20000
    split = _route_many(table, {}, n)
    assert set(split) == {"v1", "v2"}
    # 10% of 20000 = 2000, sd ~42: six standard deviations either way.
    assert abs(split["v2"] - 2000) < 260, split
    assert _route_many(table, {"x-ab-test": "v2"}, 500) == Counter({"v2": 500})
    assert _route_many(table, {"x-ab-test": "v1"}, 2000)["v2"] < 400  # other values: weights


def test_gateway_follows_changed_weights(render):
    table = _table(render({"versions": [{"name": "v1", "weight": 0}, {"name": "v2",
                                                                     "weight": 100}]}))
    assert _route_many(table, {}, 1000) == Counter({"v2": 1000})


def test_gateway_process_serves_the_rendered_routes(render, serve_process, tmp_path):
    """`vllm-canary gateway --routes <chart's VS+DR>` in front of real v1/v2 servers."""
    import json
    import subprocess
    import urllib.request

    from tests.fixtures.server import CLI
    from vllm_canary import procs

    if subprocess.run([CLI, "gateway", "--help"], capture_output=True, timeout=60).returncode:
        pytest.skip("`vllm-canary gateway` is not in this checkout yet")
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump_all(
        [m.obj for m in render().manifests if m.kind in ("VirtualService", "DestinationRule")]))
    v1, v2 = serve_process("v1"), serve_process("v2")
    port, mport, aport = procs.free_port(), procs.free_port(), procs.free_port()
    gw = procs.start([CLI, "gateway", "--routes", str(routes), "--host", "127.0.0.1",
                      "--port", str(port), "--metrics-port", str(mport), "--admin-port",
                      str(aport), "--seed", "3",
                      "--upstream", f"v1={v1.url}", "--upstream", f"v2={v2.url}"],
                     env={"VLLM_CANARY_ADMIN_TOKEN": "t"}, log=tmp_path / "gateway.log")
    try:
        procs.wait_http(f"http://127.0.0.1:{mport}/metrics", 60, gw)

        def version(headers: dict[str, str]) -> str:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/completions",
                json.dumps({"prompt": "hello", "max_tokens": 2}).encode(),
                {"Host": "vllm-service.default.svc.cluster.local", **headers})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.headers["x-model-version"]

        split = Counter(version({}) for _ in range(300))
        assert 10 <= split["v2"] <= 55 and split["v1"] + split["v2"] == 300, split
        assert Counter(version({"x-ab-test": "v2"}) for _ in range(30)) == Counter({"v2": 30})
    finally:
        procs.stop(gw)
