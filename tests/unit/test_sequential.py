"""The always-valid rate-ratio test: exact formulas, persistence, and by simulation its
false-rollback rate (A/A) and power."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_canary.analysis.histogram import exceedances, histogram_quantile, pick_threshold
from vllm_canary.analysis.sequential import (
    RateRatioTest,
    delta_grid,
    log_lr_increment,
    rejection_times,
)


def simulate(runs: int, seconds: int, p_c: float, p_b: float, seed: int,
             weight: float = 0.1, rate: float = 20.0):
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate, (runs, seconds))
    n_c = rng.binomial(n, weight)
    n_b = n - n_c
    return rng.binomial(n_c, p_c), rng.binomial(n_b, p_b), n_c, n_b


def test_increment_is_the_binomial_log_likelihood_ratio() -> None:
    deltas = delta_grid(1.0)
    got = log_lr_increment(3, 5, 40, 360, deltas, 1.0)
    theta = 40 * deltas / (40 * deltas + 360)
    theta0 = 40 / 400
    want = 3 * np.log(theta / theta0) + 5 * np.log((1 - theta) / (1 - theta0))
    np.testing.assert_allclose(got, want)


def test_a_window_where_one_version_served_nothing_carries_no_evidence() -> None:
    deltas = delta_grid(1.0)
    assert not log_lr_increment(0, 4, 0, 100, deltas, 1.0).any()
    assert not log_lr_increment(4, 0, 100, 0, deltas, 1.0).any()


@pytest.mark.parametrize("p", [0.01, 0.05, 0.3])
def test_a_a_false_rollbacks_stay_below_alpha_over_500_runs(p: float) -> None:
    times = rejection_times(*simulate(500, 600, p, p, seed=11), delta0=1.0, alpha=0.01)
    assert np.mean(times >= 0) <= 0.01


def test_a_a_with_changing_weights_stays_below_alpha() -> None:
    x_c, x_b, n_c, n_b = simulate(500, 300, 0.02, 0.02, seed=5)
    x2 = simulate(500, 300, 0.02, 0.02, seed=6, weight=0.5)
    cat = [np.concatenate([a, b], axis=1) for a, b in zip((x_c, x_b, n_c, n_b), x2, strict=True)]
    assert np.mean(rejection_times(*cat, delta0=1.0, alpha=0.01) >= 0) <= 0.01


def test_a_five_fold_error_rate_is_caught_in_every_run_within_ten_minutes() -> None:
    times = rejection_times(*simulate(500, 600, 0.05, 0.01, seed=3), delta0=1.0, alpha=0.01)
    assert (times >= 0).all()


def test_running_test_matches_the_vectorised_one_and_survives_json() -> None:
    x_c, x_b, n_c, n_b = simulate(1, 400, 0.05, 0.01, seed=8)
    first = int(rejection_times(x_c, x_b, n_c, n_b, 1.0, 0.01)[0])
    test = RateRatioTest(alpha=0.01)
    seen = None
    for i in range(400):
        test = RateRatioTest.from_dict(test.to_dict())
        test.update(int(x_c[0, i]), int(x_b[0, i]), int(n_c[0, i]), int(n_b[0, i]))
        if test.rejected and seen is None:
            seen = i
    assert seen == first
    assert test.rejected and test.p_value <= 0.01


def test_p_value_never_increases() -> None:
    test = RateRatioTest()
    values = []
    for xc, xb in [(3, 1), (0, 9), (0, 9), (5, 1)]:
        test.update(xc, xb, 100, 900)
        values.append(test.p_value)
    assert values == sorted(values, reverse=True)


def test_histogram_quantile_follows_prometheus() -> None:
    bounds = np.array([1.0, 2.0, 4.0])
    assert histogram_quantile(0.5, bounds, np.array([1, 3, 4, 4])) == pytest.approx(1.5)
    assert histogram_quantile(0.99, bounds, np.array([0, 0, 0, 10])) == 4.0  # +Inf bucket
    assert histogram_quantile(0.1, bounds, np.array([10, 10, 10, 10])) == pytest.approx(0.1)
    assert np.isnan(histogram_quantile(0.5, bounds, np.array([0, 0, 0, 0])))


def test_threshold_is_the_bucket_nearest_the_baselines_p95() -> None:
    bounds = np.array([100.0, 250.0, 500.0])
    cum = np.array([600, 930, 998, 1000])  # 7% above 250, 0.2% above 500
    assert pick_threshold(bounds, cum, 0.95) == 250.0
    assert exceedances(bounds, cum, 250.0) == 70
    assert pick_threshold(bounds, np.zeros(4), 0.95) is None


def test_within_tolerance_test_is_valid_when_the_canary_is_twice_as_bad() -> None:
    data = simulate(500, 600, 0.02, 0.01, seed=21, weight=0.5)
    times = rejection_times(*data, delta0=2.0, alpha=0.01, direction="within")
    assert np.mean(times >= 0) <= 0.01


def test_within_tolerance_test_confirms_a_healthy_canary() -> None:
    data = simulate(500, 900, 0.01, 0.01, seed=22, weight=0.5)
    times = rejection_times(*data, delta0=2.0, alpha=0.01, direction="within")
    assert np.mean(times >= 0) >= 0.8
