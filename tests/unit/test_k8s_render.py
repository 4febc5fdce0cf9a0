"""The chart renders with the real Helm engine and honours the names other parts rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.fixtures.k8s import CHART, find


def test_defaults_render_the_contract_names(render):
    ms = render().manifests
    refs = {m.ref for m in ms}
    for ref in ("Service/vllm-service", "Deployment/vllm-v1", "Deployment/vllm-v2",
                "HorizontalPodAutoscaler/vllm-v1", "DestinationRule/vllm", "VirtualService/vllm",
                "Gateway/vllm-gateway", "CronJob/vllm-dataloop", "PersistentVolumeClaim/vllm-logs",
                "ServiceMonitor/vllm", "PrometheusRule/vllm-canary",
                "ConfigMap/vllm-sre-dashboard"):
        assert ref in refs
    dep = find(ms, "Deployment", "vllm-v2")
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == {"app": "vllm", "version": "v2"}
    container = pod["spec"]["containers"][0]
    assert container["args"][:5] == ["serve", "--version", "v2", "--engine", "vllm"]
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_virtualservice_header_route_first_then_weights(render):
    vs = find(render().manifests, "VirtualService", "vllm")["spec"]
    host = "vllm-service.default.svc.cluster.local"
    assert vs["hosts"] == [host]
    first, default = vs["http"]
    assert first["match"] == [{"headers": {"x-ab-test": {"exact": "v2"}}}]
    assert first["route"] == [{"destination": {"host": host, "subset": "v2"}}]
    assert [(r["destination"]["subset"], r["weight"]) for r in default["route"]] == [
        ("v1", 90), ("v2", 10)]
    dr = find(render().manifests, "DestinationRule", "vllm")["spec"]
    assert dr["subsets"] == [{"name": "v1", "labels": {"version": "v1"}},
                             {"name": "v2", "labels": {"version": "v2"}}]


def test_namespace_goes_into_fqdn_hosts(render):
    vs = find(render(namespace="llm").manifests, "VirtualService", "vllm")["spec"]
    assert vs["hosts"] == ["vllm-service.llm.svc.cluster.local"]


def test_a_third_version_is_one_values_entry(render):
    values = {"versions": [{"name": "v1", "weight": 80}, {"name": "v2", "weight": 10},
                           {"name": "v3", "weight": 10}]}
    ms = render(values).manifests
    find(ms, "Deployment", "vllm-v3")
    find(ms, "HorizontalPodAutoscaler", "vllm-v3")
    vs = find(ms, "VirtualService", "vllm")["spec"]
    assert [r["weight"] for r in vs["http"][1]["route"]] == [80, 10, 10]
    dr = find(ms, "DestinationRule", "vllm")["spec"]
    assert [s["name"] for s in dr["subsets"]] == ["v1", "v2", "v3"]


def test_mirror_and_hpa_off(render):
    ms = render({"routing": {"mirror": {"enabled": True, "percentage": 25}},
                 "autoscaling": {"enabled": False}}).manifests
    route = find(ms, "VirtualService", "vllm")["spec"]["http"][1]
    assert route["mirror"]["subset"] == "v2"
    assert route["mirrorPercentage"] == {"value": 25}
    assert not [m for m in ms if m.kind == "HorizontalPodAutoscaler"]
    assert find(ms, "Deployment", "vllm-v1")["spec"]["replicas"] == 1


def test_probes_allow_the_model_load_time(render):
    pod = find(render().manifests, "Deployment", "vllm-v1")["spec"]["template"]["spec"]
    startup = pod["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_dashboard_and_rules_are_embedded(render):
    ms = render().manifests
    dash = json.loads(find(ms, "ConfigMap", "vllm-sre-dashboard")["data"]["vllm-sre.json"])
    assert dash["title"] == "vLLM-SRE"
    rules = find(ms, "PrometheusRule", "vllm-canary")["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"VLLMCanaryErrorRateHigh", "VLLMVersionDown",
                                          "VLLMCanaryLatencyRegression", "VLLMCanaryNoTraffic"}


def test_cronjob_runs_nightly_without_overlap(render):
    cj = find(render().manifests, "CronJob", "vllm-dataloop")["spec"]
    assert cj["schedule"] == "0 2 * * *"
    assert cj["concurrencyPolicy"] == "Forbid"


def test_helm_lint_is_clean(chart_dir):
    import helm_python as helm

    report = helm.lint(chart_dir, strict=True)
    assert report["errors"] == [] and report["messages"] == []


def test_render_command_prints_a_yaml_stream(tmp_path, chart_dir):
    out = tmp_path / "m.yaml"
    proc = subprocess.run([sys.executable, "-m", "vllm_canary.cli", "render", str(CHART),
                           "--set", "routing.abTest.value=beta", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    assert vs["spec"]["http"][0]["match"][0]["headers"]["x-ab-test"] == {"exact": "beta"}


@pytest.mark.parametrize("argv, needle", [
    (["render", "/nonexistent-chart"], "is not a Helm chart"),
    (["render", str(CHART), "-f", "/nonexistent.yaml"], "cannot read values file"),
    (["render", str(CHART), "--set", "routing.mode=linkerd"], "values.schema.json"),
    (["render", str(CHART), "--release", "Bad_Name"], "bad release name"),
    (["render", str(CHART), "--namespace", "Bad_NS"], "bad namespace"),
    (["doctor", str(CHART), "--load-seconds", "0"], "--load-seconds must be at least 1"),
])
def test_user_mistakes_are_one_line_errors(argv, needle, chart_dir):
    proc = subprocess.run([sys.executable, "-m", "vllm_canary.cli", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cronjob_args_are_a_valid_vllm_canary_command(render):
    from vllm_canary.cli import build_parser

    ms = render().manifests
    pod = find(ms, "CronJob", "vllm-dataloop")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.loop_command) == ("loop", "daily")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_CANARY_V1"] == "http://vllm-service-v1.default.svc.cluster.local:8000"
    assert env["VLLM_CANARY_V2"] == "http://vllm-service-v2.default.svc.cluster.local:8000"
    find(ms, "Service", "vllm-service-v1")  # the URLs resolve to per-version Services


def test_server_args_are_a_valid_serve_command(render):
    from vllm_canary.cli import build_parser

    container = find(render().manifests, "Deployment", "vllm-v1")["spec"]["template"]["spec"][
        "containers"][0]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.version, args.engine, args.port) == ("serve", "v1", "vllm", 8000)
    assert "--tensor-parallel-size" in args.vllm_args


def test_dataloop_without_persistence_is_a_render_error(chart_dir):
    from vllm_canary.errors import UserError
    from vllm_canary.k8s.render import render_chart

    with pytest.raises(UserError, match=r"needs persistence\.enabled"):
        render_chart(chart_dir, {"persistence": {"enabled": False}})


def test_render_output_round_trips(render):
    from vllm_canary.k8s.render import to_yaml

    rendered = render({"routing": {"mirror": {"enabled": True}}})
    text = to_yaml(rendered)
    assert "vllm-sre.json: |" in text  # multi-line data as readable blocks
    assert [d for d in yaml.safe_load_all(text) if d] == [m.obj for m in rendered.manifests]
