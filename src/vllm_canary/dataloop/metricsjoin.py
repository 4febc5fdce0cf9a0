"""Each version's operational metrics for the evaluated day: from the sample's own answers
(always), and from Prometheus when given (the servers' real traffic over that UTC day)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from vllm_canary import promserver
from vllm_canary.analysis.quality import p95
from vllm_canary.dataloop.decision import VersionMetrics
from vllm_canary.errors import UserError


def from_samples(items: list[dict[str, Any]], version: str) -> VersionMetrics:
    """p95 latency, error rate and tokens/s of the answers `sample` collected."""
    answers = [it["answers"][version] for it in items if version in (it.get("answers") or {})]
    if not answers:
        return VersionMetrics()
    ok = [a for a in answers if a.get("error") is None and a.get("latency_s") is not None]
    latencies = [float(a["latency_s"]) for a in ok]
    tokens = sum(int(a.get("completion_tokens") or 0) for a in ok)
    busy = sum(latencies)
    return VersionMetrics(p95_latency_s=p95(latencies),
                          error_rate=1 - len(ok) / len(answers),
                          tokens_per_s=tokens / busy if busy > 0 else math.nan,
                          source="sample", requests=len(answers))


def day_window(day: dt.date, now: dt.datetime | None = None) -> tuple[int, float]:
    """(range seconds, evaluation unix time) covering the UTC day, or its part so far."""
    now = now or dt.datetime.now(dt.UTC)
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    end = min(start + dt.timedelta(days=1), now)
    return max(60, int((end - start).total_seconds())), end.timestamp()


def _by_version(result: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for series in result:
        version = series.get("metric", {}).get("version")
        value = float(series["value"][1])
        if version is not None and not math.isnan(value):
            out[version] = value
    return out


def queries(window_s: int, at: float) -> dict[str, str]:
    """The PromQL behind each metric (the same metric names in the mesh and locally)."""
    r = f"[{window_s}s] @ {at:.3f}"
    return {
        "p95_latency_s": "histogram_quantile(0.95, sum by (version, le) "
                         f"(increase(vllm_request_latency_seconds_bucket{r})))",
        # `or ... * 0`: a version with no 5xx series at all has an error rate of 0, not none.
        "error_rate": f'(sum by (version) (increase(vllm_requests_total{{status=~"5.."}}{r})) '
                      f"or sum by (version) (increase(vllm_requests_total{r})) * 0) "
                      f"/ sum by (version) (increase(vllm_requests_total{r}))",
        "tokens_per_s": f"sum by (version) (increase(vllm_generation_tokens_total{r})) "
                        f"/ sum by (version) (increase(vllm_request_latency_seconds_sum{r}))",
    }


def from_prometheus(url: str, day: dt.date, versions: list[str],
                    now: dt.datetime | None = None) -> dict[str, VersionMetrics]:
    """Per-version metrics over the day; a version without traffic gets NaNs."""
    window, at = day_window(day, now)
    values: dict[str, dict[str, float]] = {}
    for name, promql in queries(window, at).items():
        try:
            values[name] = _by_version(promserver.query(url, promql))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot query Prometheus at {url}: {exc}") from None
    return {v: VersionMetrics(p95_latency_s=values["p95_latency_s"].get(v, math.nan),
                              error_rate=values["error_rate"].get(v, math.nan),
                              tokens_per_s=values["tokens_per_s"].get(v, math.nan),
                              source="prometheus") for v in versions}
