"""`doctor` finds each planted fault from the troubleshooting table and nothing on the defaults."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.k8s import CHART
from vllm_canary.k8s.doctor import run_checks
from vllm_canary.k8s.render import Manifest

Obj = dict[str, Any]


def _edit(ms: list[Manifest], kind: str, change: Callable[[Obj], None]) -> list[Manifest]:
    out = []
    for m in ms:
        obj = copy.deepcopy(m.obj)
        if m.kind == kind:
            change(obj)
        out.append(Manifest(m.source, obj))
    return out


def _drop(ms: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in ms if m.kind != kind]


def _set_subset_labels(o: Obj) -> None:
    o["spec"]["subsets"][1]["labels"] = {"version": "V2"}


def _short_host(o: Obj) -> None:
    o["spec"]["hosts"] = ["vllm-service"]


def _bad_weights(o: Obj) -> None:
    """Istio refuses several destinations whose weights are all 0 (relative weights otherwise
    need not sum to 100)."""
    for dest in o["spec"]["http"][1]["route"]:
        dest["weight"] = 0


def _unknown_subset(o: Obj) -> None:
    o["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v3"


def _unnamed_port(o: Obj) -> None:
    o["spec"]["ports"][0]["name"] = "openai"


def _no_annotation(o: Obj) -> None:
    o["metadata"]["annotations"] = {}


def _hpa_target(o: Obj) -> None:
    o["spec"]["scaleTargetRef"]["name"] = "vllm"


def _short_startup(o: Obj) -> None:
    c = o["spec"]["template"]["spec"]["containers"][0]
    c["startupProbe"]["failureThreshold"] = 6


def _no_requests(o: Obj) -> None:
    o["spec"]["template"]["spec"]["containers"][0]["resources"] = {}


FAULTS: dict[str, tuple[str, Callable[[list[Manifest]], list[Manifest]]]] = {
    "no healthy upstream (subset labels)":
        ("subset-labels", lambda ms: _edit(ms, "DestinationRule", _set_subset_labels)),
    "no healthy upstream (undefined subset)":
        ("route-subsets", lambda ms: _edit(ms, "VirtualService", _unknown_subset)),
    "404 (short host)": ("fqdn-hosts", lambda ms: _edit(ms, "VirtualService", _short_host)),
    "weights": ("weights", lambda ms: _edit(ms, "VirtualService", _bad_weights)),
    "missing metrics": ("scrape", lambda ms: _edit(_drop(ms, "ServiceMonitor"), "Service",
                                                   _no_annotation)),
    "port names": ("port-names", lambda ms: _edit(ms, "Service", _unnamed_port)),
    "hpa target": ("hpa-targets", lambda ms: _edit(ms, "HorizontalPodAutoscaler", _hpa_target)),
    "hpa requests": ("hpa-targets", lambda ms: _edit(ms, "Deployment", _no_requests)),
    "probes": ("probes", lambda ms: _edit(ms, "Deployment", _short_startup)),
}


def test_gateway_api_backend_without_service_is_found(render):
    ms = _drop(render({"routing": {"mode": "gatewayapi"}}).manifests, "Service")
    findings = run_checks([m for m in ms if m.kind != "Deployment"] + [
        m for m in render().manifests if m.kind == "Service" and m.name == "vllm-service"])
    assert "backend-refs" in {f.check for f in findings}


def test_defaults_and_variants_are_clean(render):
    for values in ({}, {"routing": {"mode": "gatewayapi"}}, {"rollouts": {"enabled": True}},
                   {"autoscaling": {"enabled": False}}):
        assert [str(f) for f in run_checks(render(values).manifests)] == []


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_planted_fault_is_found_with_a_fix(fault, render):
    check, plant = FAULTS[fault]
    findings = run_checks(plant(render().manifests))
    assert findings, fault
    assert {f.check for f in findings} == {check}
    assert all(f.fix and f.ref for f in findings)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_canary.cli", *argv],
                          capture_output=True, text=True, timeout=180)


def test_doctor_command_exit_codes(chart_dir):
    ok = _cli("doctor", str(CHART))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _cli("doctor", str(CHART), "--set", "engine.loadTimeoutSeconds=120")
    assert bad.returncode == 1
    assert bad.stdout.count("FAIL [probes]") == 2
    assert "Fix:" in bad.stdout
    weights = _cli("doctor", str(CHART), "--set", "versions[0].name=v1,versions[0].weight=0",
                   "--set", "versions[1].name=v2,versions[1].weight=0")
    assert weights.returncode == 1 and "total destination weight = 0" in weights.stdout
    relative = _cli("doctor", str(CHART), "--set", "versions[0].name=v1,versions[0].weight=1",
                    "--set", "versions[1].name=v2,versions[1].weight=1")
    assert relative.returncode == 0, relative.stdout  # 1:1 is 50/50 (Istio >= 1.15)
