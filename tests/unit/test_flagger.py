"""Flagger's analysis as re-implemented for the benchmark: the scheduler's documented
behaviour on hand-made intervals."""

from __future__ import annotations

import numpy as np

from vllm_canary.analysis.flagger import PROGRESSING, PROMOTED, ROLLED_BACK, FlaggerAnalysis
from vllm_canary.analysis.histogram import ISTIO_MS_BUCKETS

BOUNDS = np.asarray(ISTIO_MS_BUCKETS, dtype=float)


def hist(n: int, bucket_ms: float) -> np.ndarray:
    """Cumulative histogram of n requests that all took `bucket_ms`."""
    per = np.zeros(len(BOUNDS) + 1)
    per[int(np.searchsorted(BOUNDS, bucket_ms))] = n
    return np.cumsum(per)[None, :]


def run(checks: list[tuple[int, int, float]]) -> FlaggerAnalysis:
    fl = FlaggerAnalysis(1)
    for i, (n, errors, ms) in enumerate(checks):
        fl.tick(60.0 * (i + 1), np.array([n]), np.array([errors]), BOUNDS, hist(n, ms))
    return fl


def test_healthy_canary_steps_10_to_50_and_promotes_after_five_checks() -> None:
    weights = []
    fl = FlaggerAnalysis(1)
    for i in range(5):
        weights.append(int(fl.weight[0]))
        fl.tick(60.0 * (i + 1), np.array([200]), np.array([0]), BOUNDS, hist(200, 100))
    assert weights == [10, 20, 30, 40, 50]
    assert fl.phase[0] == PROMOTED and fl.decided_at[0] == 300.0


def test_no_data_counts_as_a_failed_check_and_rolls_back_at_the_next_tick() -> None:
    fl = run([(0, 0, 100)] * 5)
    assert fl.phase[0] == PROGRESSING and fl.failed[0] == 5 and fl.weight[0] == 10
    fl.tick(360.0, np.array([200]), np.array([0]), BOUNDS, hist(200, 100))
    assert fl.phase[0] == ROLLED_BACK and fl.decided_at[0] == 360.0


def test_success_rate_below_99_percent_fails_and_holds_the_weight() -> None:
    fl = run([(200, 3, 100)])  # 98.5%
    assert fl.failed[0] == 1 and fl.weight[0] == 10
    fl = run([(200, 2, 100)])  # exactly 99% passes
    assert fl.failed[0] == 0 and fl.weight[0] == 20


def test_p99_over_500ms_fails() -> None:
    assert run([(200, 0, 1000)]).failed[0] == 1
    assert run([(200, 0, 250)]).failed[0] == 0


def test_failed_checks_are_never_reset_by_a_pass() -> None:
    fl = run([(200, 9, 100), (200, 0, 100)] * 4 + [(200, 9, 100)])
    assert fl.failed[0] == 5
    assert fl.phase[0] == PROGRESSING
