"""The rollout's dark-launch analysis: while the canary gets mirrored (shadow) traffic, its
errors and latency on those requests are compared with the baseline's on the same requests,
with the same sequential tests as a canary step, plus output agreement from the request logs.

Evidence comes from the model servers' own series (both measured at the fronts, same buckets):
the baseline's served `vllm_requests_total`, `vllm_request_latency_seconds`,
`vllm_time_to_first_token_seconds`, against the canary's `vllm_shadow_*` twins
(server/shadow.py). With `mirrorPercentage` P < 100 the baseline's requests are a superset of
the mirrored ones, drawn at random: the rate-ratio tests compare rates, so unequal counts are
fine. Results are named `shadow-<metric>` so the live view keeps them apart from the canary's.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from vllm_canary.analysis.verdict import MetricResult, Verdict
from vllm_canary.rollout.analyzer import Analyzer
from vllm_canary.rollout.metrics.base import Histogram, Snapshot, VersionStats, window
from vllm_canary.rollout.metrics.samples import Sample
from vllm_canary.rollout.strategy import AnalysisSpec

PREFIX = "shadow-"
SERVED, SHADOW = "served", "shadow"
SHADOW_METRICS = ("error-rate", "latency-p95", "ttft-p95")  # what the shadow series measure
# role -> (requests counter, {histogram key: series}) in the servers' exposition
SERIES = {
    SERVED: ("vllm_requests_total", {"latency": "vllm_request_latency_seconds",
                                     "ttft": "vllm_time_to_first_token_seconds"}),
    SHADOW: ("vllm_shadow_requests_total", {"latency": "vllm_shadow_request_latency_seconds",
                                            "ttft": "vllm_shadow_time_to_first_token_seconds"}),
}


def fold(samples: list[Sample], stable: str, canary: str) -> Snapshot:
    """{served: the stable's served traffic, shadow: the canary's shadow traffic}."""
    out: Snapshot = {}
    for role, version in ((SERVED, stable), (SHADOW, canary)):
        counter, hists = SERIES[role]
        st = VersionStats()
        found = False
        for name, labels, value in samples:
            if labels.get("version") != version:
                continue
            if name in (counter, counter.removesuffix("_total")):
                found = True
                st.requests += value
                if labels.get("status", "").startswith("5"):
                    st.errors += value
        for key, series in hists.items():
            acc: dict[float, float] = defaultdict(float)
            for name, labels, value in samples:
                if name == series + "_bucket" and labels.get("version") == version \
                        and "le" in labels:
                    acc[float(labels["le"])] += value
            if acc:
                finite = sorted(le for le in acc if not math.isinf(le))
                st.histograms[key] = Histogram(finite, [acc[le] for le in finite]
                                               + [acc.get(math.inf, 0.0)])
        if found:
            out[role] = st
    return out


class ShadowReader:
    """Reads the served and shadow series through whatever the rollout's metric source reaches:
    the servers' /metrics (direct scrape, counters folded per series as the scrape source
    does) or Prometheus (sums of the cumulative series by version)."""

    def __init__(self, source: Any, stable: str, canary: str) -> None:
        self.source, self.stable, self.canary = source, stable, canary
        self.tracker: Any = None

    def samples(self) -> list[Sample]:
        urls = getattr(self.source, "server_urls", None)
        if isinstance(urls, dict):
            from vllm_canary.rollout.metrics.counters import SeriesTracker
            from vllm_canary.rollout.metrics.scrape import _try

            self.tracker = self.tracker or SeriesTracker()
            round_ = {f"{v} {u}": _try(u) for v, us in urls.items() for u in us}
            totals = self.tracker.fold(round_, self.source.now())
            return [s for samples in totals.values() for s in samples]
        url = getattr(self.source, "url", None)
        if isinstance(url, str):
            from vllm_canary.promserver import query

            out: list[Sample] = []
            for counter, hists in SERIES.values():
                exprs = [(f"sum by (version, status) ({counter})", counter)]
                exprs += [(f"sum by (version, le) ({h}_bucket)", h + "_bucket")
                          for h in hists.values()]
                for expr, name in exprs:
                    out += [(name, dict(r["metric"]), float(r["value"][1]))
                            for r in query(url, expr, getattr(self.source, "timeout", 5.0))]
            return out
        return []

    def snapshot(self) -> Snapshot:
        return fold(self.samples(), self.stable, self.canary)


def shadow_spec(spec: AnalysisSpec) -> AnalysisSpec:
    """The analysis settings with only the metrics shadow traffic measures (error-rate and
    latency-p95 at least, so a dark launch is always judged on them)."""
    wanted = [m for m in spec.metric_names() if m in SHADOW_METRICS]
    for must in ("error-rate", "latency-p95"):
        if must not in wanted:
            wanted.append(must)
    return spec.model_copy(update={"metrics": wanted})


class ShadowAnalysis:
    """An Analyzer of (served baseline, shadow canary) windows; state is a plain dict."""

    def __init__(self, spec: AnalysisSpec, stable: str, canary: str, source: Any,
                 state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.analyzer = Analyzer(shadow_spec(spec), SERVED, SHADOW, None, state.get("analyzer"))
        self.reader = ShadowReader(source, stable, canary)
        # Not resumed from the state: a fresh reader's counts start at its own first poll
        # (rollout/metrics/counters.py), so a window across two lives would mix two counts.
        self.last: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"analyzer": self.analyzer.to_dict(), "last": self.last}

    def poll(self, active: bool = True) -> None:
        """While mirroring (`active`), feed the window since the last poll; otherwise read
        nothing, so the first window of a dark launch starts at its first poll. A source
        outage is no data, never a failure."""
        if not active:
            self.last = None
            return
        try:
            current = self.reader.snapshot()
        except (OSError, ValueError):
            return
        if self.last:
            previous = {k: VersionStats.from_dict(v) for k, v in self.last.items()}
            self.analyzer.observe(window(previous, current), current)
        self.last = {k: v.to_dict() for k, v in current.items()}

    def start_step(self) -> None:
        self.analyzer.start_step()

    def sequential_results(self) -> list[MetricResult]:
        return [_renamed(r) for r in self.analyzer.sequential_results()]


def _renamed(r: MetricResult) -> MetricResult:
    r.metric = PREFIX + r.metric
    return r


def agreement_result(spec: AnalysisSpec, stable: str, canary: str,
                     since: float | None) -> MetricResult:
    """Mean similarity of today's shadow pairs logged since `since` (epoch s) against
    `minAgreement`; fewer than `minSamples` pairs is inconclusive."""
    from vllm_canary.dataloop import shadow as pairs
    from vllm_canary.dataloop.shadowreport import mean_ci

    day = dt.datetime.now(dt.UTC).date()
    dirs = [Path(d) for d in spec.logs if Path(d).is_dir()]
    if not dirs:
        return MetricResult("agreement", Verdict.INCONCLUSIVE,
                            reason=f"no request-log folder among {', '.join(spec.logs)}")
    joined = pairs.join(dirs, day, stable, canary)
    cutoff = dt.datetime.fromtimestamp(since or 0, dt.UTC).isoformat()
    sims = [pairs.compare(a, b).similarity for a, b in joined.pairs
            if str(a.get("ts", "")) >= cutoff]
    summary = mean_ci(sims)
    mean, n = summary["mean"], len(sims)
    extra = {"pairs": n, "ci95": summary["ci95"], "unpaired": dict(joined.unpaired)}
    if n < spec.min_samples:
        return MetricResult("agreement", Verdict.INCONCLUSIVE, canary=mean, samples=n,
                            reason=f"{n}/{spec.min_samples} shadow pairs", extra=extra)
    ok = mean >= spec.min_agreement
    return MetricResult("agreement", Verdict.PASS if ok else Verdict.FAIL, canary=mean,
                        baseline=spec.min_agreement, samples=n, extra=extra,
                        reason=f"mean similarity {mean:.3f} over {n} pairs "
                               f"({'≥' if ok else '<'} minAgreement {spec.min_agreement:g})")


def gate_results(main: list[MetricResult], shadow: list[MetricResult], canary_weight: float,
                 mirror: float) -> list[MetricResult]:
    """An analysis gate's verdicts. While mirroring, the shadow tests count too; while the
    canary also serves nothing, its served-traffic tests cannot have data and are left out
    (quality, agreement and custom PromQL stay)."""
    if mirror <= 0:
        return main
    if canary_weight <= 0:
        main = [r for r in main if r.metric not in SEQUENTIAL]
    return main + shadow


SEQUENTIAL = ("error-rate", "latency-p95", "ttft-p95", "itl-p95")
