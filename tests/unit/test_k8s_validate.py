"""Every rendered object validates; a planted error in each kind is caught with its path."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.k8s import CHART
from vllm_canary.k8s import crds
from vllm_canary.k8s.render import Manifest
from vllm_canary.k8s.validate import validate_all, validate_manifest

VARIANTS = {
    "defaults": {},
    "gateway-api": {"routing": {"mode": "gatewayapi", "mirror": {"enabled": True},
                                "timeout": "300s"}},
    "mirror-outlier-retries": {"routing": {"mirror": {"enabled": True},
                                           "outlierDetection": {"enabled": True},
                                           "timeout": "300s",
                                           "retries": {"attempts": 2, "perTryTimeout": "120s",
                                                       "retryOn": "connect-failure,503"}}},
    "argo-rollouts": {"rollouts": {"enabled": True, "analysis": {"web": {"enabled": True}}}},
    "hpa-off-no-pvc": {"autoscaling": {"enabled": False}, "persistence": {"enabled": False},
                       "dataloop": {"enabled": False}},
    "hpa-custom-metric": {"autoscaling": {"requestsWaiting": {"enabled": True}}},
    "three-versions": {"versions": [{"name": "v1", "weight": 80}, {"name": "v2", "weight": 10},
                                    {"name": "v3", "weight": 10, "model": "org/other"}]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates(variant, render):
    rendered = render(VARIANTS[variant])
    assert rendered.manifests
    assert [str(p) for p in validate_all(rendered.manifests)] == []


def _all_kinds(render) -> dict[str, Manifest]:
    kinds: dict[str, Manifest] = {}
    for values in VARIANTS.values():
        for m in render(values).manifests:
            kinds.setdefault(f"{m.obj['apiVersion']} {m.kind}", m)
    return kinds


# Where to plant a mistake in each kind: (path to a mapping, key, bad value).
PLANTS = {
    "Deployment": (["spec", "template", "spec", "containers", 0], "port", 8000),
    "Rollout": (["spec", "strategy", "canary"], "setWeight", 10),
    "Service": (["spec", "ports", 0], "port", "eighty"),
    "HorizontalPodAutoscaler": (["spec"], "minReplicas", "one"),
    "CronJob": (["spec"], "concurrencyPolicy", ["Forbid"]),
    "PersistentVolumeClaim": (["spec"], "size", "20Gi"),
    "ConfigMap": ([], "spec", {"data": {}}),
    "VirtualService": (["spec", "http", 0], "matches", []),
    "DestinationRule": (["spec", "subsets", 0], "label", {"version": "v1"}),
    "Gateway": (["spec"], "listener", []),
    "HTTPRoute": (["spec", "rules", 0], "backendRef", []),
    "ServiceMonitor": (["spec", "endpoints", 0], "interval", 15),
    "PodMonitor": (["spec"], "podMetricsEndpoint", []),
    "PrometheusRule": (["spec", "groups", 0, "rules", 0], "expression", "up"),
    "AnalysisTemplate": (["spec", "metrics", 0, "provider"], "prometeus", {}),
}


def test_a_planted_error_in_each_kind_is_caught(render):
    kinds = _all_kinds(render)
    assert {k.split(" ")[1] for k in kinds} == set(PLANTS)
    for label, m in kinds.items():
        path, key, bad = PLANTS[m.kind]
        obj = copy.deepcopy(m.obj)
        node = obj
        for part in path:
            node = node[part]
        node[key] = bad
        problems = validate_manifest(Manifest(m.source, obj))
        assert problems, f"{label}: planted {key}={bad!r} at {path} was not caught"
        assert all(p.ref == m.ref for p in problems)
        text = "\n".join(str(p) for p in problems)
        assert m.ref in text and m.source in text


def test_every_problem_is_listed_with_its_path(render):
    dep = next(m for m in render().manifests if m.kind == "Deployment")
    obj = copy.deepcopy(dep.obj)
    obj["spec"]["replicas"] = "two"
    obj["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    paths = {p.path for p in validate_manifest(Manifest(dep.source, obj))}
    assert "spec.replicas" in paths
    assert "spec.template.spec.containers[0].ports[0].containerPort" in paths


def test_unknown_kind_is_a_failure_not_a_warning():
    m = Manifest("t.yaml", {"apiVersion": "example.com/v1", "kind": "Widget",
                            "metadata": {"name": "w"}})
    problems = validate_manifest(m)
    assert problems and "Couldn't find schema" in problems[0].message


def test_unknown_version_of_a_known_crd_group_is_a_failure():
    m = Manifest("t.yaml", {"apiVersion": "networking.istio.io/v9", "kind": "VirtualService",
                            "metadata": {"name": "x"}, "spec": {}})
    assert validate_manifest(m)[0].path == "apiVersion"


def test_unknown_fields_are_rejected_only_where_crds_do_not_preserve_them():
    schema = {"type": "object", "properties": {"spec": {
        "type": "object", "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}}}}}}
    tight = crds.tighten(schema)
    spec = tight["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["closed"]["additionalProperties"] is False
    assert "additionalProperties" not in spec["properties"]["open"]
    assert "additionalProperties" not in tight  # the root (metadata ...) stays open


def test_bundled_crds_match_their_recorded_checksums():
    readme = (crds.PACKAGE_DIR / "README.md").read_text()
    recorded = dict(reversed(line.split()) for line in readme.split("```")[1].split("\n")
                    if len(line.split()) == 2)
    files = sorted(p.name for p in crds.PACKAGE_DIR.glob("*.yaml"))
    assert files == sorted(recorded)
    for name in files:
        digest = hashlib.sha256((crds.PACKAGE_DIR / name).read_bytes()).hexdigest()
        assert digest == recorded[name], name


def test_bundled_crds_equal_the_shared_ones_when_present():
    if not crds.SHARED_DIR.is_dir():
        pytest.skip("no ../shared/schemas/crds beside this checkout")
    for path in crds.SHARED_DIR.glob("*.yaml"):
        assert (crds.PACKAGE_DIR / path.name).read_bytes() == path.read_bytes(), path.name


def test_env_var_overrides_the_schema_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(crds.ENV_VAR, str(tmp_path))
    assert crds.schema_dir() == tmp_path


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_canary.cli", *argv],
                          capture_output=True, text=True, timeout=180)


def test_validate_command_exit_codes(chart_dir, tmp_path: Path):
    ok = _cli("validate", str(CHART))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "objects valid" in ok.stdout
    # A planted mistake in the chart itself: a typo'd field in the DestinationRule template.
    broken = tmp_path / "vllm-canary"
    subprocess.run(["cp", "-r", str(CHART), str(broken)], check=True)
    dr = broken / "templates" / "destinationrule.yaml"
    dr.write_text(dr.read_text().replace("  subsets:", "  subset:"))
    svc = broken / "templates" / "service.yaml"
    svc.write_text(svc.read_text().replace("type: ClusterIP", "type: [ClusterIP]", 1))
    (broken / "Chart.yaml").write_text((broken / "Chart.yaml").read_text().replace(
        "icon: ", "iconx: "))
    bad = _cli("validate", str(broken))
    assert bad.returncode == 1
    assert "DestinationRule/vllm (vllm-canary/templates/destinationrule.yaml): spec:" in bad.stdout
    assert "Service/vllm-service" in bad.stdout and "spec.type" in bad.stdout
    assert "LINT " in bad.stdout  # helm lint --strict: the icon is gone
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("version", ["0.1", "1.2", "abc", "1.99"])
def test_a_kube_version_without_schemas_is_one_line_not_a_traceback(version):
    # Below the oldest schema kubernetes-validate itself fails with an IndexError.
    res = _cli("validate", str(CHART), "--kube-version", version)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "use 1." in res.stderr, res.stderr


def test_an_unknown_kind_in_a_known_crd_group_says_so():
    m = Manifest("t.yaml", {"apiVersion": "networking.istio.io/v1", "kind": "VirtualServce",
                            "metadata": {"name": "x"}, "spec": {}})
    [problem] = validate_manifest(m)
    assert problem.message.endswith("networking.istio.io has no kind VirtualServce"), problem
