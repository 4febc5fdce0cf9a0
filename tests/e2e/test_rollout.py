"""End to end on a real local stack (two `serve --engine sim` processes behind the gateway):
`vllm-canary rollout start` promotes a healthy v2, aborts an erroring or dead one, and a
controller killed mid-step resumes where it was."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fixtures.rollout import LoadGen, cli
from vllm_canary import procs, promserver

pytestmark = pytest.mark.real

STRATEGY = """\
steps:
  - setWeight: 10
  - analysis: {duration: 20s}
  - setWeight: 50
  - analysis: {duration: 20s}
  - setWeight: 100
analysis:
  metrics: [error-rate, latency-p95, ttft-p95]
  alpha: 0.01
  interval: 1s
  minSamples: 20
  downAfter: 5s
"""


def start_rollout(tmp_path: Path, stack, state: Path, text: str = STRATEGY,
                  flags: list[str] | None = None) -> subprocess.Popen[str]:
    strategy = tmp_path / "rollout.yaml"
    strategy.write_text(text)
    return subprocess.Popen(
        cli("rollout", "start", "--strategy", str(strategy), "--state", str(state),
            *(stack.rollout_flags() if flags is None else flags)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 150.0) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"rollout did not finish in {timeout}s:\n{out}")
    return proc.returncode, out


def test_healthy_v2_is_promoted(tmp_path: Path, stack_factory) -> None:
    stack = stack_factory()
    with LoadGen(stack.url("gw")):
        code, out = finish(start_rollout(tmp_path, stack, tmp_path / "state.json"))
    assert code == 0, out
    assert stack.weights() == {"v1": 0, "v2": 100}
    assert "promoted" in out


def test_v2_with_5_percent_errors_is_aborted(tmp_path: Path, stack_factory) -> None:
    stack = stack_factory(v2_error_rate=0.05)
    with LoadGen(stack.url("gw")):
        code, out = finish(start_rollout(tmp_path, stack, tmp_path / "state.json"))
    assert code == 4, out
    assert stack.weights() == {"v1": 100, "v2": 0}
    assert "error-rate" in out


def test_v2_killed_mid_rollout_is_aborted(tmp_path: Path, stack_factory) -> None:
    stack = stack_factory()
    state = tmp_path / "state.json"
    with LoadGen(stack.url("gw")):
        proc = start_rollout(tmp_path, stack, state)
        wait_for(state, lambda s: s["phase"] == "Analyzing" and s["step"] == 1)
        stack.kill("v2")
        code, out = finish(proc)
    assert code == 4, out
    assert stack.weights() == {"v1": 100, "v2": 0}


@pytest.mark.parametrize("source", ["scrape", "prometheus"])
def test_v2_restarted_mid_analysis_with_30_percent_errors_is_aborted(
        tmp_path: Path, stack_factory, source: str) -> None:
    """Issue 10: v2's server restarts mid-analysis, its counters back at zero, and the rollout
    still aborts on the error rate (not on v2 being down). The analysis reads v2's own
    counters, as in the mesh, where the Envoy sidecar that counts a pod's requests restarts
    with the pod: the gateway's metrics are left out (a dead URL, or not scraped), so the
    requests that failed while v2 was down are not counted and the abort rests on what v2
    counted before and after its restart. Directly, and through a real Prometheus."""
    stack = stack_factory(v2_error_rate=0.3)
    state = tmp_path / "state.json"
    strategy = STRATEGY.replace("downAfter: 5s", "downAfter: 120s")
    servers = [f"v1={stack.url('v1m')}/metrics", f"v2={stack.url('v2m')}/metrics"]
    flags = ["--admin-url", stack.url("admin"), "--admin-token-file", str(stack.token_file),
             "--scrape", f"http://127.0.0.1:{procs.free_port()}/metrics", *servers]
    with contextlib.ExitStack() as cleanup:
        if source == "prometheus":
            require(promserver.find_binary() is not None, "Prometheus", promserver.INSTALL_HINT)
            job = promserver.ScrapeJob("vllm", [stack.url("v1m")[7:], stack.url("v2m")[7:]])
            prom = cleanup.enter_context(promserver.PrometheusServer(tmp_path / "prom", [job]))
            flags = [*flags[:4], "--prometheus", prom.url]
        cleanup.enter_context(LoadGen(stack.url("gw")))
        proc = start_rollout(tmp_path, stack, state, strategy, flags)
        wait_for(state, lambda s: s["phase"] == "Analyzing" and s["step"] == 1)
        stack.restart("v2")
        restarted = time.time()
        code, out = finish(proc)
    assert code == 4, out
    assert stack.weights() == {"v1": 100, "v2": 0}
    events = json.loads(state.read_text())["events"]
    abort = next(e for e in events if e["message"].startswith("aborting: "))
    assert "error-rate" in abort["message"] and "down" not in abort["message"], out
    assert abort["at"] > restarted, out  # decided with what v2 counted after its restart


def test_controller_killed_mid_step_resumes(tmp_path: Path, stack_factory) -> None:
    stack = stack_factory()
    state = tmp_path / "state.json"
    with LoadGen(stack.url("gw")):
        first = start_rollout(tmp_path, stack, state)
        before = wait_for(state, lambda s: s["phase"] == "Analyzing" and s["step"] == 3)
        first.kill()
        first.communicate()
        code, out = finish(start_rollout(tmp_path, stack, state))
    assert code == 0, out
    assert "resuming" in out
    after = json.loads(state.read_text())
    steps_entered = [e["message"] for e in after["events"]]
    assert steps_entered.count("canary weight 10%") == 1
    assert steps_entered.count("canary weight 50%") == 1
    resumed = [e for e in after["events"] if e["step"] == 4]  # the analysis step it was in
    assert resumed and resumed[0]["at"] >= before["step_started"] + 20  # kept its start time
    assert stack.weights() == {"v1": 0, "v2": 100}


def wait_for(state: Path, ok, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            data = None
        if data and ok(data):
            return data
        time.sleep(0.2)
    pytest.fail(f"rollout state never reached the expected point: {data}")


def test_on_vllm_canary_up_with_no_target_flags(tmp_path: Path, up_factory) -> None:
    """`make up` then `rollout start --strategy rollout.yaml`: the stack's own state file
    gives the admin API and the metrics (its Prometheus when one runs)."""
    env, st = up_factory("--v2-error-rate", "0.05")
    strategy = tmp_path / "rollout.yaml"
    strategy.write_text(STRATEGY)
    with LoadGen(st.gateway_url):
        proc = subprocess.Popen(
            cli("rollout", "start", "--strategy", str(strategy), "--state",
                str(tmp_path / "state.json")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        code, out = finish(proc)
    assert code == 4, out
    source = "Prometheus" if st.prometheus_url else "direct scrape"
    assert source in out.splitlines()[0]
    req = urllib.request.Request(st.admin_url + "/routes",
                                 headers={"Authorization": f"Bearer {st.admin_token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.load(resp)["weights"] == {"v1": 100, "v2": 0}
