"""The chart with a LoRA version (`versions[].lora: {name, path}`): no pods of its own, the
adapter loaded on the base's pods, routed there with `x-canary-version`, validated like
everything else; and the gateway, executing those routes, splits as the weights say."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from tests.fixtures.k8s import find
from vllm_canary.k8s.render import to_yaml

LORA = {
    "versions": [{"name": "v1", "weight": 90},
                 {"name": "v2", "weight": 10,
                  "lora": {"name": "my-adapter-2", "path": "/adapters/a2"}}],
    "dataloop": {"enabled": False},
    "loraAdapters": {"volume": {"persistentVolumeClaim": {"claimName": "adapters"}}},
}
HOST = "vllm-service.default.svc.cluster.local"


def _kinds(rendered) -> set[tuple[str, str]]:
    return {(m.kind, m.name) for m in rendered.manifests}


def test_a_lora_version_has_no_pods_of_its_own(render):
    kinds = _kinds(render(LORA))
    assert ("Deployment", "vllm-v1") in kinds and ("HorizontalPodAutoscaler", "vllm-v1") in kinds
    assert not {k for k in kinds if k[1].endswith("-v2")}, kinds


def test_the_base_pods_load_the_adapter(render):
    from vllm_canary.cli import build_parser

    pod = find(render(LORA).manifests, "Deployment", "vllm-v1")["spec"]["template"]["spec"]
    args = build_parser().parse_args(pod["containers"][0]["args"])
    assert args.lora == ["v2:my-adapter-2=/adapters/a2"] and args.engine == "vllm"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "lora-adapters")
    assert mount == {"name": "lora-adapters", "mountPath": "/adapters", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "lora-adapters")
    assert volume == {"name": "lora-adapters", "persistentVolumeClaim": {"claimName": "adapters"}}


def test_routes_send_the_lora_version_to_the_base_with_its_header(render):
    ms = render(LORA).manifests
    subsets = {s["name"]: s["labels"] for s in find(ms, "DestinationRule", "vllm")["spec"][
        "subsets"]}
    assert subsets == {"v1": {"version": "v1"}, "v2": {"version": "v1"}}
    http = {r["name"]: r for r in find(ms, "VirtualService", "vllm")["spec"]["http"]}
    canary = {d["destination"]["subset"]: d for d in http["canary"]["route"]}
    assert canary["v2"]["headers"] == {"request": {"set": {"x-canary-version": "v2"}}}
    assert canary["v2"]["weight"] == 10
    # a client's own header never reaches the base's front on the base's route
    assert canary["v1"]["headers"] == {"request": {"remove": ["x-canary-version"]}}
    assert http["ab-test"]["route"][0]["headers"] == canary["v2"]["headers"]


def test_without_lora_the_routes_carry_no_header_edits(render):
    http = find(render().manifests, "VirtualService", "vllm")["spec"]["http"]
    assert all("headers" not in d for r in http for d in r["route"])


def test_it_validates_like_everything_else(render):
    from vllm_canary.k8s.validate import validate_all

    assert validate_all(render(LORA).manifests) == []


def test_dashboard_drops_istio_panels_for_adapter_versions(render):
    def titles(values):
        cm = find(render(values).manifests, "ConfigMap", "vllm-sre-dashboard")
        return [p["title"] for p in json.loads(cm["data"]["vllm-sre.json"])["panels"]]

    full, lora = titles({}), titles(LORA)
    dropped = set(full) - set(lora)
    assert dropped and all("Istio" in t for t in dropped), dropped
    assert "Requests per second" in lora and "Error rate (5xx share)" in lora
    forced = titles({"monitoring": {"versionMetrics": "front"}})
    assert forced == lora


@pytest.mark.parametrize(("extra", "needle"), [
    ({"monitoring": {"versionMetrics": "istio"}}, "destination_version is the pod's label"),
    ({"routing": {"mirror": {"enabled": True, "version": "v2"}}}, "cannot set the version header"),
    ({"engine": {"name": "sim", "model": "x"}}, "need engine.name vllm"),
    ({"routing": {"mode": "gatewayapi"}}, "set routing.mode istio"),
    ({"dataloop": {"enabled": True}}, "dataloop"),
    ({"rollouts": {"enabled": True}}, "Argo Rollouts replaces pods"),
    ({"versions": [{"name": "v1", "weight": 90},
                   {"name": "v2", "weight": 10, "lora": {"name": "a", "path": "/a",
                                                          "base": "v9"}}]}, "not in versions"),
    ({"versions": [{"name": "v2", "weight": 100, "lora": {"name": "a", "path": "/a"}}]},
     "needs a base version"),
])
def test_values_a_lora_version_cannot_work_with_are_refused(chart_dir, extra, needle):
    from vllm_canary.errors import UserError
    from vllm_canary.k8s.render import render_chart

    with pytest.raises(UserError, match=needle):
        render_chart(chart_dir, {**LORA, **extra})


def test_schema_requires_name_and_an_absolute_path(chart_dir):
    from vllm_canary.errors import UserError
    from vllm_canary.k8s.render import render_chart

    for lora in ({"path": "/a"}, {"name": "a", "path": "relative"}, {"name": "a", "path": "/a",
                                                                     "x": 1}):
        values = {**LORA, "versions": [{"name": "v1", "weight": 90},
                                       {"name": "v2", "weight": 10, "lora": lora}]}
        with pytest.raises(UserError):
            render_chart(chart_dir, values)


def test_the_gateway_executes_the_split_with_the_header(render):
    """The compiled routes: 10% (of 20000) to subset v2 carrying the header, whose endpoints
    are the base's pods; `x-ab-test: v2` all of them; a client's own header removed on v1."""
    from vllm_canary.gateway.compiler import compile_table
    from vllm_canary.gateway.istio import parse_documents
    from vllm_canary.gateway.routing import Request, decide

    rendered = render(LORA)
    table = compile_table(parse_documents(to_yaml(rendered), "chart"))
    assert table.services[HOST].subsets["v2"] == {"version": "v1"}
    rng = random.Random(5)

    def route(headers: dict[str, str], n: int) -> Counter:
        req = Request("POST", "/v1/completions", HOST, headers)
        out: Counter = Counter()
        for _ in range(n):
            dest = decide(table, req, rng).destination
            out[(dest.subset, dest.headers.request.set, dest.headers.request.remove)] += 1
        return out

    v2 = ("v2", (("x-canary-version", "v2"),), ())
    v1 = ("v1", (), ("x-canary-version",))
    split = route({"x-canary-version": "v2"}, 20000)
    assert set(split) == {v1, v2}
    assert abs(split[v2] - 2000) < 260, split  # 10% of 20000, six standard deviations
    assert route({"x-ab-test": "v2"}, 300) == Counter({v2: 300})


def test_the_kubernetes_actuator_keeps_the_header_edits(render):
    """A rollout's VirtualService patch changes weights only: the adapter's destination still
    sets its header afterwards."""
    from vllm_canary.rollout.actuators.kubernetes import with_weights

    http = find(render(LORA).manifests, "VirtualService", "vllm")["spec"]["http"]
    canary = {d["destination"]["subset"]: d for d in with_weights(http, {"v1": 40, "v2": 60})[1][
        "route"]}
    assert canary["v2"]["weight"] == 60
    assert canary["v2"]["headers"] == {"request": {"set": {"x-canary-version": "v2"}}}


def test_doctor_finds_nothing_wrong_with_a_lora_version(chart_dir, tmp_path, capsys):
    """Its subset selects the base's pods, which exist: no "subset matches no pods" finding."""
    import yaml

    from vllm_canary.cli import main

    values = tmp_path / "values-lora.yaml"
    values.write_text(yaml.safe_dump(LORA))
    assert main(["doctor", str(chart_dir), "-f", str(values)]) == 0
    assert "pass every troubleshooting check" in capsys.readouterr().out
