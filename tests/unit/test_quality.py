"""Quality statistics against scipy on the same numbers (and Krippendorff's published example)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vllm_canary.analysis import quality


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_exact_equals_scipy(seed: int) -> None:
    d = np.random.default_rng(seed).normal(0.3, 1.0, 25)
    ours = quality.wilcoxon_signed_rank(d)
    ref = stats.wilcoxon(d, method="exact")
    assert ours.method == "exact"
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_with_ties_and_zeros_equals_scipy_approx(seed: int) -> None:
    # Rating differences are small integers: many ties and zeros, as in real evaluations.
    d = np.random.default_rng(seed).integers(-3, 4, 90).astype(float)
    ours = quality.wilcoxon_signed_rank(d)
    ref = stats.wilcoxon(d, zero_method="wilcox", method="approx")
    assert ours.method == "approx"
    assert ours.n == int((d != 0).sum())
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_wilcoxon_all_zero_is_no_evidence() -> None:
    result = quality.wilcoxon_signed_rank([0, 0, 0])
    assert result.n == 0 and result.pvalue == 1.0


@pytest.mark.parametrize(("wins", "losses"), [(30, 18), (0, 5), (7, 7), (1, 40), (55, 45)])
def test_sign_test_equals_binomtest(wins: int, losses: int) -> None:
    ref = stats.binomtest(wins, wins + losses, 0.5).pvalue
    assert quality.sign_test(wins, losses).pvalue == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize(("k", "n"), [(30, 48), (0, 10), (10, 10), (1, 3), (512, 1000)])
def test_wilson_equals_scipy(k: int, n: int) -> None:
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = quality.wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_close_to_scipy_percentile() -> None:
    x = np.random.default_rng(7).normal(3.2, 1.1, 200)
    lo, hi = quality.bootstrap_ci(x, n_resamples=8000, seed=1)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=8000,
                          random_state=1).confidence_interval
    # Different resamples: equal up to Monte-Carlo error (the CI is ~0.3 wide here).
    assert lo == pytest.approx(ref.low, abs=0.02)
    assert hi == pytest.approx(ref.high, abs=0.02)
    assert lo < float(np.mean(x)) < hi


def test_bootstrap_is_deterministic_and_degenerate_cases() -> None:
    x = [1, 2, 3, 4, 5, 4, 3]
    assert quality.bootstrap_ci(x, seed=3) == quality.bootstrap_ci(x, seed=3)
    assert quality.bootstrap_ci([4, 4, 4]) == (4.0, 4.0)
    assert all(math.isnan(v) for v in quality.bootstrap_ci([]))


def test_win_tie_loss_counts_and_intervals() -> None:
    wtl = quality.win_tie_loss([1, 0.5, 0, -1, 2, 0])
    assert (wtl.wins, wtl.ties, wtl.losses) == (3, 2, 1)
    assert wtl.rate("wins") == pytest.approx(0.5)
    ref = stats.binomtest(3, 6).proportion_ci(method="wilson")
    assert wtl.interval("wins") == pytest.approx((ref.low, ref.high))
    share, (lo, hi) = wtl.decisive_share()
    assert share == pytest.approx(0.75) and lo < share < hi


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4-coder 12-unit
# example with missing values: alpha nominal 0.743, interval 0.849.
KRIPPENDORFF_UNITS = [
    [1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
    [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3],
]


def test_krippendorff_alpha_published_example() -> None:
    alpha = quality.krippendorff_alpha
    assert alpha(KRIPPENDORFF_UNITS, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert alpha(KRIPPENDORFF_UNITS, "interval") == pytest.approx(0.849, abs=5e-4)


def test_agreement_edge_cases() -> None:
    assert quality.krippendorff_alpha([[3, 3], [4, 4]]) == pytest.approx(1.0)
    assert math.isnan(quality.krippendorff_alpha([[3], [4]]))
    assert quality.exact_agreement([[1, 1, 2], [3, 3]]) == pytest.approx(2 / 4)
