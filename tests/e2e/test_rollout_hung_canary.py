"""A canary that stops answering mid-analysis (its process frozen: connections are accepted by
the kernel, nothing is ever answered) is aborted. The gateway's stream idle timeout turns each
hung v2 request into a 504 with Envoy's flag SI, which the analysis counts as a v2 error (a
5xx in istio_requests_total), instead of the client disconnects it would otherwise see. With
its health checks off and only the gateway's metrics read, the error rate is what aborts it."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_rollout import finish, start_rollout, wait_for
from tests.fixtures.rollout import LoadGen

pytestmark = pytest.mark.real


def test_v2_that_stops_answering_mid_analysis_is_aborted(tmp_path: Path,
                                                         stack_factory) -> None:
    stack = stack_factory(gateway_args=("--stream-idle-timeout", "2", "--health-path", ""))
    state = tmp_path / "state.json"
    v2 = stack.children["v2"]
    try:
        with LoadGen(stack.url("gw")):
            # the gateway's Istio metrics only: v2's own /metrics (frozen too) would make the
            # controller see it as down; here the analysis must see the timeouts as errors
            flags = ["--admin-url", stack.url("admin"), "--admin-token-file", str(stack.token_file),
                     "--scrape", stack.url("gw_metrics") + "/metrics"]
            proc = start_rollout(tmp_path, stack, state, flags=flags)
            wait_for(state, lambda s: s["phase"] == "Analyzing" and s["step"] == 1)
            os.kill(v2.pid, signal.SIGSTOP)
            code, out = finish(proc)
    finally:
        os.kill(v2.pid, signal.SIGCONT)
    assert code == 4, out
    assert stack.weights() == {"v1": 100, "v2": 0}
    reason = next(line for line in out.splitlines() if "aborted:" in line)
    assert "error-rate" in reason and "down" not in reason, out
    with urllib.request.urlopen(stack.url("gw_metrics") + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    hung = [line for line in metrics.splitlines()
            if line.startswith("istio_requests_total{") and 'destination_version="v2"' in line
            and 'response_code="504"' in line and 'response_flags="SI"' in line]
    assert hung and float(hung[0].rsplit(" ", 1)[1]) > 0, metrics[-2000:]
