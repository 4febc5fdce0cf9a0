"""The answer an analysis gives about one metric, as the CLI, the controller and Argo's
`web` provider read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"  # enough data, no evidence that the canary is worse
    FAIL = "fail"  # the always-valid test says the canary is worse
    INCONCLUSIVE = "inconclusive"  # not enough data yet: wait, never fail


@dataclass
class MetricResult:
    metric: str
    verdict: Verdict
    p_value: float = 1.0
    canary: float | None = None  # the canary's value (rate or share over the threshold)
    baseline: float | None = None
    samples: int = 0  # canary observations in the current analysis step
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = str(self.verdict)
        return d


def combine(results: list[MetricResult]) -> Verdict:
    """Fail if any metric fails; pass only if all pass; otherwise inconclusive."""
    if any(r.verdict is Verdict.FAIL for r in results):
        return Verdict.FAIL
    if results and all(r.verdict is Verdict.PASS for r in results):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE
