"""A rollout that starts dark, on a real local stack (two `serve --engine sim` processes behind
the gateway, all traffic on v1): `setMirror: 100` sends every request to v2 as a shadow too; a
v2 that fails 30% of them is aborted during the mirror step, before any client got a v2 answer,
and the mirror is removed; a healthy v2 passes the shadow analysis and goes on to setWeight."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_rollout import finish
from tests.fixtures.rollout import LoadGen, cli
from vllm_canary.rollout.metrics.scrape import scrape

pytestmark = pytest.mark.real

STRATEGY = """\
steps:
  - setMirror: 100
  - analysis: {duration: 8s}
  - setMirror: 0
  - setWeight: 10
analysis:
  metrics: [error-rate, latency-p95]
  alpha: 0.01
  interval: 1s
  minSamples: 20
"""


def _admin(stack, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(stack.url("admin") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {stack.token}",
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def _mirror_on_routes(stack) -> bool:
    vs = _admin(stack, "GET", "/routes")["virtualservices"]
    return any("mirror" in http for v in vs for http in v["spec"]["http"])


def _served_by_v2(stack) -> float:
    return sum(v for n, lab, v in scrape(stack.url("gw_metrics") + "/metrics")
               if n == "istio_requests_total" and lab.get("destination_version") == "v2")


def _dark_rollout(tmp_path: Path, stack) -> tuple[int, str]:
    _admin(stack, "PUT", "/weights", {"weights": {"v1": 100, "v2": 0}})
    strategy = tmp_path / "dark.yaml"
    strategy.write_text(STRATEGY)
    with LoadGen(stack.url("gw")):
        proc = subprocess.Popen(
            cli("rollout", "start", "--strategy", str(strategy), "--state",
                str(tmp_path / "state.json"), *stack.rollout_flags()),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return finish(proc, timeout=120)


def test_v2_with_30_percent_errors_is_aborted_while_dark(tmp_path: Path, stack_factory) -> None:
    stack = stack_factory(v2_error_rate=0.3)
    code, out = _dark_rollout(tmp_path, stack)
    assert code == 4, out
    assert "shadow-error-rate" in out
    assert _served_by_v2(stack) == 0  # no client ever received a v2 answer
    assert stack.weights() == {"v1": 100, "v2": 0}
    assert not _mirror_on_routes(stack)  # the abort removed the mirror
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 1 and state["mirror"] == 0  # it stopped in the dark analysis


def test_healthy_v2_passes_the_dark_analysis_and_gets_weight(tmp_path: Path,
                                                             stack_factory) -> None:
    stack = stack_factory()
    code, out = _dark_rollout(tmp_path, stack)
    assert code == 0, out
    assert "analysis passed" in out and "canary weight 10%" in out
    state = json.loads((tmp_path / "state.json").read_text())
    shadow = state["shadow"]["analyzer"]["tests"]["error-rate"]
    assert shadow["requests_c"] >= 20  # judged on real shadow answers
    assert not _mirror_on_routes(stack)
