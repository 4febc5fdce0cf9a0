"""Pure statistics for answer quality: bootstrap confidence intervals, the Wilcoxon
signed-rank test, the sign test, win/tie/loss rates with Wilson intervals, and
Krippendorff's alpha for agreement between annotators. No I/O; numbers in, numbers out."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Interval = tuple[float, float]


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean (NaNs when there are no values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // x.size)  # bound memory: at most ~2M draws at a time
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        means[start:stop] = x[rng.integers(0, x.size, (stop - start, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class TestResult:
    statistic: float
    pvalue: float
    n: int  # observations the test used (zeros / ties dropped)
    method: str


def _signed_rank_exact_cdf(n: int) -> np.ndarray:
    """Cumulative distribution of the signed-rank statistic T+ for n untied, non-zero ranks."""
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0**n


def wilcoxon_signed_rank(
    differences: Sequence[float], method: Literal["auto", "exact", "approx"] = "auto",
) -> TestResult:
    """Two-sided Wilcoxon signed-rank test on paired differences, zeros dropped (scipy's
    `zero_method="wilcox"`). Exact for n ≤ 50 without ties, else the normal approximation
    with tie correction and no continuity correction (scipy's defaults)."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return TestResult(math.nan, 1.0, 0, "none")
    ranks = stats.rankdata(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    statistic = min(r_plus, r_minus)
    _, tie_counts = np.unique(np.abs(d), return_counts=True)
    has_ties = bool((tie_counts > 1).any())
    if method == "exact" or (method == "auto" and n <= 50 and not has_ties):
        cdf = _signed_rank_exact_cdf(n)
        p = 2.0 * cdf[int(statistic)]
        return TestResult(statistic, float(min(1.0, p)), n, "exact")
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float((tie_counts**3 - tie_counts).sum()) / 48.0
    if var <= 0:
        return TestResult(statistic, 1.0, n, "approx")
    z = (statistic - mean) / math.sqrt(var)
    return TestResult(statistic, float(min(1.0, 2.0 * stats.norm.sf(abs(z)))), n, "approx")


def sign_test(wins: int, losses: int) -> TestResult:
    """Two-sided exact sign test of wins against losses (ties are left out by the caller)."""
    n = wins + losses
    if n == 0:
        return TestResult(math.nan, 1.0, 0, "exact")
    k = min(wins, losses)
    p = 2.0 * float(stats.binom.cdf(k, n, 0.5))
    return TestResult(float(wins), min(1.0, p), n, "exact")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion k/n (no continuity correction)."""
    if n == 0:
        return (math.nan, math.nan)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class WinTieLoss:
    """Outcomes of the candidate against the baseline, each rate with a Wilson interval."""

    wins: int
    ties: int
    losses: int
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def rate(self, outcome: Literal["wins", "ties", "losses"]) -> float:
        return getattr(self, outcome) / self.n if self.n else math.nan

    def interval(self, outcome: Literal["wins", "ties", "losses"]) -> Interval:
        return wilson_interval(getattr(self, outcome), self.n, self.confidence)

    def decisive_share(self) -> tuple[float, Interval]:
        """Share of wins among decisive (non-tie) outcomes, with its interval; 0.5 = even."""
        m = self.wins + self.losses
        share = self.wins / m if m else math.nan
        return share, wilson_interval(self.wins, m, self.confidence)


def win_tie_loss(differences: Sequence[float], confidence: float = 0.95) -> WinTieLoss:
    """Count positive (win), zero (tie) and negative (loss) paired differences."""
    d = np.asarray(differences, dtype=float)
    return WinTieLoss(int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum()), confidence)


def krippendorff_alpha(
    units: Sequence[Sequence[float]], metric: Literal["interval", "nominal"] = "interval",
) -> float:
    """Krippendorff's alpha over units (each: the values different annotators gave it).
    Units with fewer than two values are not pairable and are ignored; NaN if undefined."""
    pairable = [list(u) for u in units if len(u) >= 2]
    if not pairable:
        return math.nan

    def delta(a: float, b: float) -> float:
        return (a - b) ** 2 if metric == "interval" else float(a != b)

    observed = 0.0
    total: Counter[float] = Counter()
    for unit in pairable:
        m = len(unit)
        s = sum(delta(a, b) for i, a in enumerate(unit) for j, b in enumerate(unit) if i != j)
        observed += s / (m - 1)
        total.update(unit)
    n = sum(total.values())
    d_o = observed / n
    values = list(total)
    d_e = sum(total[a] * total[b] * delta(a, b) for a in values for b in values) / (n * (n - 1))
    if d_e == 0:
        return 1.0 if d_o == 0 else math.nan
    return 1.0 - d_o / d_e


def exact_agreement(units: Sequence[Sequence[float]]) -> float:
    """Share of annotator pairs (within a unit) that gave the same value; NaN if none."""
    same = pairs = 0
    for unit in units:
        for i in range(len(unit)):
            for j in range(i + 1, len(unit)):
                pairs += 1
                same += unit[i] == unit[j]
    return same / pairs if pairs else math.nan


def p95(values: Sequence[float]) -> float:
    """95th percentile (linear interpolation); NaN when there are no values."""
    return float(np.percentile(values, 95)) if len(values) else math.nan
