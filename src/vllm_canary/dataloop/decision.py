"""The promotion rule, pure: quality non-inferiority (ratings and/or pairwise), a latency
budget, an error budget and a minimum sample → promote, continue or rollback, with reasons."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from vllm_canary.analysis.quality import wilson_interval

Verdict = Literal["promote", "continue", "rollback"]
EXIT_CODES: dict[Verdict, int] = {"promote": 0, "continue": 3, "rollback": 4}
Names = tuple[str, str]  # (baseline, candidate)


@dataclass(frozen=True)
class Rule:
    """Thresholds of the decision; every reason quotes the one it applied."""

    margin: float = 0.25  # v2 may score at most this much below v1 (1-5 scale)
    win_margin: float = 0.05  # pairwise: v2's share of decisive wins may be ≥ 0.5 - this
    min_pairs: int = 20  # prompts judged for both versions before quality can decide
    latency_budget: float = 0.20  # v2 p95 may exceed v1 p95 by this fraction ...
    latency_slack_s: float = 0.05  # ... plus this many seconds (noise floor for fast answers)
    error_budget: float = 0.02  # v2 error rate may exceed v1's by this much (absolute)
    confidence: float = 0.95


@dataclass(frozen=True)
class RatingEvidence:
    n_pairs: int
    mean_diff: float  # candidate - baseline, per prompt
    ci: tuple[float, float]
    pvalue: float


@dataclass(frozen=True)
class PairwiseEvidence:
    n_decisive: int
    share: float  # candidate's share of decisive wins
    ci: tuple[float, float]
    pvalue: float


@dataclass(frozen=True)
class VersionMetrics:
    p95_latency_s: float = math.nan
    error_rate: float = math.nan
    tokens_per_s: float = math.nan
    source: str = "sample"
    requests: int = 0  # behind error_rate; 0 = unknown (e.g. a Prometheus rate)


@dataclass
class Check:
    name: str
    status: Literal["pass", "fail", "inconclusive"]
    detail: str


@dataclass
class Decision:
    decision: Verdict
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "exit_code": self.exit_code, "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}


def _rating_check(ev: RatingEvidence | None, rule: Rule, names: Names) -> Check | None:
    if ev is None:
        return None
    lo, hi = ev.ci
    base, cand = names
    text = (f"{cand} - {base} mean score {ev.mean_diff:+.2f} on {ev.n_pairs} prompts rated for "
            f"both ({rule.confidence:.0%} CI {lo:+.2f}..{hi:+.2f}, Wilcoxon p={ev.pvalue:.3g})")
    if ev.n_pairs < rule.min_pairs:
        return Check("rating", "inconclusive",
                     f"only {ev.n_pairs} prompts rated for both versions (need ≥ {rule.min_pairs})")
    if hi < -rule.margin:
        return Check("rating", "fail", f"{text}: worse than the margin -{rule.margin}")
    if lo > -rule.margin:
        return Check("rating", "pass", f"{text}: non-inferior within margin -{rule.margin}")
    return Check("rating", "inconclusive", f"{text}: the interval still reaches -{rule.margin}")


def _pairwise_check(ev: PairwiseEvidence | None, rule: Rule, names: Names) -> Check | None:
    if ev is None:
        return None
    lo, hi = ev.ci
    floor = 0.5 - rule.win_margin
    text = (f"{names[1]} preferred in {ev.share:.0%} of {ev.n_decisive} decisive pairwise "
            f"judgements ({rule.confidence:.0%} CI {lo:.0%}..{hi:.0%}, "
            f"sign test p={ev.pvalue:.3g})")
    if ev.n_decisive < rule.min_pairs:
        return Check("pairwise", "inconclusive",
                     f"only {ev.n_decisive} decisive pairwise judgements (need ≥ {rule.min_pairs})")
    if hi < floor:
        return Check("pairwise", "fail", f"{text}: below {floor:.0%}")
    if lo > floor:
        return Check("pairwise", "pass", f"{text}: non-inferior (above {floor:.0%})")
    return Check("pairwise", "inconclusive", f"{text}: the interval still reaches {floor:.0%}")


def _latency_check(
    base: VersionMetrics, cand: VersionMetrics, rule: Rule, names: Names
) -> Check | None:
    b, c = base.p95_latency_s, cand.p95_latency_s
    if math.isnan(b) or math.isnan(c):
        return None
    limit = b * (1 + rule.latency_budget) + rule.latency_slack_s
    text = (f"p95 latency {names[1]} {c:.3f}s vs {names[0]} {b:.3f}s ({cand.source}; budget "
            f"+{rule.latency_budget:.0%} +{rule.latency_slack_s}s = {limit:.3f}s)")
    return Check("latency", "fail" if c > limit else "pass", text)


def _error_check(
    base: VersionMetrics, cand: VersionMetrics, rule: Rule, names: Names
) -> Check | None:
    b, c = base.error_rate, cand.error_rate
    if math.isnan(b) or math.isnan(c):
        return None
    text = (f"error rate {names[1]} {c:.2%} vs {names[0]} {b:.2%} ({cand.source}; budget "
            f"+{rule.error_budget:.2%})")
    # On a small sample one transient failure is no evidence: judge the lower bound of v2's
    # rate when the count behind it is known, the rate itself otherwise.
    if cand.requests:
        c = wilson_interval(round(c * cand.requests), cand.requests, rule.confidence)[0]
        text += f", {rule.confidence:.0%} lower bound {c:.2%} of {cand.requests} requests"
    return Check("errors", "fail" if c > b + rule.error_budget else "pass", text)


def decide(
    rating: RatingEvidence | None, pairwise: PairwiseEvidence | None,
    baseline: VersionMetrics, candidate: VersionMetrics, rule: Rule,
    names: Names = ("v1", "v2"),
) -> Decision:
    """Any failed check → rollback; every quality check passed and nothing failed → promote;
    otherwise (no labels, too few, intervals too wide) → continue collecting. `names` are
    (baseline, candidate) as the reasons call them."""
    quality = [c for c in (_rating_check(rating, rule, names),
                           _pairwise_check(pairwise, rule, names)) if c]
    if not quality:
        quality = [Check("quality", "inconclusive", "no valid labels yet")]
    ops = [c for c in (_latency_check(baseline, candidate, rule, names),
                       _error_check(baseline, candidate, rule, names)) if c]
    checks = quality + ops
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        verdict: Verdict = "rollback"
        reasons = [c.detail for c in failed]
    elif all(c.status == "pass" for c in quality):
        verdict = "promote"
        reasons = [c.detail for c in checks]
    else:
        verdict = "continue"
        reasons = [c.detail for c in checks if c.status == "inconclusive"]
    return Decision(verdict, reasons, checks)
