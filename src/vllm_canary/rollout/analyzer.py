"""Turns windows of per-version telemetry into per-metric verdicts with the always-valid
tests of `vllm_canary.analysis`; its state is a plain dict so a restarted controller resumes
with the evidence it had."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vllm_canary.analysis.histogram import exceedances, pick_threshold
from vllm_canary.analysis.sequential import RateRatioTest
from vllm_canary.analysis.verdict import MetricResult, Verdict
from vllm_canary.rollout.metrics.base import Snapshot, VersionStats
from vllm_canary.rollout.strategy import AnalysisSpec, CustomMetric

HISTOGRAM_OF = {"latency-p95": "latency", "ttft-p95": "ttft", "itl-p95": "itl"}
MIN_BASELINE_FOR_THRESHOLD = 100
Query = Callable[[str], float | None]


class Analyzer:
    """Sequential tests for error-rate and the *-p95 metrics; quality and PromQL read as-is."""

    def __init__(self, spec: AnalysisSpec, stable: str, canary: str,
                 query: Query | None = None, state: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.stable, self.canary = stable, canary
        self.query = query
        sequential = [m for m in spec.metric_names() if m == "error-rate" or m in HISTOGRAM_OF]
        alpha_each = spec.alpha / max(1, len(sequential))  # Bonferroni across metrics
        state = state or {}
        self.tests = {m: RateRatioTest.from_dict(state["tests"][m]) if m in state.get("tests", {})
                      else RateRatioTest(delta0=1.0 + spec.margin, alpha=alpha_each)
                      for m in sequential}
        self.within = {m: RateRatioTest.from_dict(state["within"][m])
                       if m in state.get("within", {})
                       else RateRatioTest(delta0=spec.tolerance, alpha=alpha_each,
                                          direction="within")
                       for m in sequential} if spec.tolerance else {}
        self.thresholds: dict[str, float | None] = dict(state.get("thresholds", {}))
        self.step_samples: dict[str, int] = dict(state.get("step_samples", {}))
        self.agreement_since: float | None = None  # the dark launch's start (rollout/shadow.py)

    def to_dict(self) -> dict[str, Any]:
        return {"tests": {m: t.to_dict() for m, t in self.tests.items()},
                "within": {m: t.to_dict() for m, t in self.within.items()},
                "thresholds": self.thresholds, "step_samples": self.step_samples}

    def start_step(self) -> None:
        """A new analysis step starts counting its own samples (evidence is kept)."""
        self.step_samples = {}

    def observe(self, window: Snapshot, current: Snapshot) -> None:
        """Add one window (differences of cumulative counts) to every sequential test."""
        c, b = window.get(self.canary), window.get(self.stable)
        if c is None or b is None:
            return  # one side unreadable: no comparison possible, so no evidence either way
        for metric, test in self.tests.items():
            x_c, x_b, n_c, n_b = self._counts(metric, c, b, current)
            if n_c <= 0 and n_b <= 0:
                continue
            test.update(x_c, x_b, n_c, n_b)
            if metric in self.within:
                self.within[metric].update(x_c, x_b, n_c, n_b)
            self.step_samples[metric] = self.step_samples.get(metric, 0) + n_c

    def _counts(self, metric: str, c: VersionStats, b: VersionStats,
                current: Snapshot) -> tuple[int, int, int, int]:
        if metric == "error-rate":
            return int(c.errors), int(b.errors), int(c.requests), int(b.requests)
        key = HISTOGRAM_OF[metric]
        hc, hb = c.histograms.get(key), b.histograms.get(key)
        if hc is None or hb is None:
            return 0, 0, 0, 0
        tau = self.thresholds.get(metric)
        if tau is None:
            # The threshold comes from the baseline's history *before* this window, so the
            # window's data never chose the threshold it is tested against.
            base_now = current.get(self.stable)
            hist = base_now.histograms.get(key) if base_now else None
            if hist is not None and hist.count - hb.count >= MIN_BASELINE_FOR_THRESHOLD:
                prior = np.asarray(hist.cumulative) - np.asarray(hb.cumulative)
                self.thresholds[metric] = pick_threshold(np.asarray(hist.bounds), prior,
                                                          self.spec.quantile)
            return 0, 0, 0, 0
        bounds = np.asarray(hc.bounds)
        if tau not in hc.bounds or hb.bounds != hc.bounds:
            return 0, 0, 0, 0
        return (int(exceedances(bounds, np.asarray(hc.cumulative), tau)),
                int(exceedances(bounds, np.asarray(hb.cumulative), tau)),
                int(hc.count), int(hb.count))

    def results(self, final_gate: bool = False) -> list[MetricResult]:
        """Verdicts now; at the final gate (before full promotion) a `tolerance` applies."""
        out = []
        for m in self.spec.metrics:
            if isinstance(m, CustomMetric):
                out.append(self._custom(m))
            elif m == "quality":
                out.append(quality_result(Path(self.spec.reports)))
            elif m == "agreement":
                from vllm_canary.rollout.shadow import agreement_result

                out.append(agreement_result(self.spec, self.stable, self.canary,
                                            self.agreement_since))
            else:
                out.append(self._sequential(m, final_gate))
        return out

    def sequential_results(self) -> list[MetricResult]:
        """Verdicts of the always-valid tests alone: cheap enough to check at every poll (no
        PromQL queries, no report files)."""
        return [self._sequential(m) for m in self.tests]

    def _sequential(self, metric: str, final_gate: bool = False) -> MetricResult:
        t = self.tests[metric]
        samples = self.step_samples.get(metric, 0)
        rate_c = t.events_c / t.requests_c if t.requests_c else None
        rate_b = t.events_b / t.requests_b if t.requests_b else None
        extra = {"threshold": self.thresholds.get(metric), "events_canary": t.events_c,
                 "events_baseline": t.events_b, "requests_canary": t.requests_c,
                 "requests_baseline": t.requests_b, "log_bayes_factor": round(t.log_bf, 3)}
        if t.rejected:
            verdict, reason = Verdict.FAIL, f"canary worse than baseline (p={t.p_value:.2g})"
        elif metric in HISTOGRAM_OF and self.thresholds.get(metric) is None:
            verdict, reason = Verdict.INCONCLUSIVE, "waiting for baseline data to set the threshold"
        elif samples < self.spec.min_samples:
            verdict, reason = Verdict.INCONCLUSIVE, (
                f"{samples}/{self.spec.min_samples} canary samples in this step")
        elif final_gate and metric in self.within and not self.within[metric].rejected \
                and t.events_c > 0:
            verdict, reason = Verdict.INCONCLUSIVE, (
                f"not yet shown within {self.spec.tolerance:g}x the baseline "
                f"(p={self.within[metric].p_value:.2g})")
        else:
            verdict, reason = Verdict.PASS, f"no evidence of regression (p={t.p_value:.2g})"
        return MetricResult(metric, verdict, t.p_value, rate_c, rate_b, samples, reason, extra)

    def _custom(self, m: CustomMetric) -> MetricResult:
        if self.query is None:
            return MetricResult(m.name, Verdict.INCONCLUSIVE, reason="PromQL needs Prometheus")
        try:
            vc = self.query(m.query.replace("$version", self.canary))
            vb = self.query(m.query.replace("$version", self.stable))
        except (OSError, ValueError) as exc:
            return MetricResult(m.name, Verdict.INCONCLUSIVE, reason=f"query failed: {exc}")
        if vc is None or vb is None:
            return MetricResult(m.name, Verdict.INCONCLUSIVE, canary=vc, baseline=vb,
                                reason="no data yet")
        ok = vc <= vb * (1 + m.max_increase) if vb >= 0 else vc <= vb
        return MetricResult(m.name, Verdict.PASS if ok else Verdict.FAIL, canary=vc, baseline=vb,
                            reason=f"canary {vc:.4g} vs baseline {vb:.4g} "
                                   f"(max +{m.max_increase:.0%})")


def quality_result(reports: Path) -> MetricResult:
    """The data loop's latest decision: rollback fails, promote passes, continue waits.
    `reports` is the folder of per-day report folders, or one report folder itself."""
    found = list(reports.glob("*/decision.json")) + list(reports.glob("decision.json"))
    days = sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))
    if not days:
        return MetricResult("quality", Verdict.INCONCLUSIVE, reason=f"no decision under {reports}")
    try:
        data = json.loads(days[-1].read_text())
        decision = str(data["decision"])
    except (OSError, ValueError, KeyError) as exc:
        return MetricResult("quality", Verdict.INCONCLUSIVE, reason=f"{days[-1]}: {exc}")
    verdicts = {"promote": Verdict.PASS, "rollback": Verdict.FAIL}
    verdict = verdicts.get(decision, Verdict.INCONCLUSIVE)
    reasons = "; ".join(str(r) for r in data.get("reasons", []))
    return MetricResult("quality", verdict, reason=f"{days[-1].parent.name}: {decision} {reasons}")
