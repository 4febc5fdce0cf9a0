"""`vllm-canary status`: per-version traffic, errors, latency percentiles, TTFT and weights.

Its windows are the rollout's (vllm_canary.rollout.metrics): per-series increases summed by
version, so a pod that restarted or went away inside the window neither inflates nor hides its
traffic. Through Prometheus when the stack runs one (`increase()` over the last minute, the
same queries `rollout` polls), else by scraping the gateway and the servers twice, `--window`
seconds apart, each target's series kept apart.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.rollout.metrics.base import Histogram, Snapshot, window
from vllm_canary.rollout.metrics.samples import to_snapshot

QUANTILES = (0.5, 0.95, 0.99)
PROMETHEUS_WINDOW_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per-version RPS, errors, p50/p95/p99, TTFT and weights")
    p.add_argument("--window", type=float, default=5.0,
                   help="seconds to measure over when no Prometheus runs (default 5)")
    p.add_argument("--no-prometheus", action="store_true", help="scrape directly")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (le -> count)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return prev_bound


def _buckets(h: Histogram | None, scale: float = 1.0) -> dict[float, float]:
    if h is None:
        return {}
    return {**{b * scale: c for b, c in zip(h.bounds, h.cumulative, strict=False)},
            float("inf"): h.count}


def from_window(win: Snapshot, seconds: float,
                latency_scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """Per-version stats of one window (a Snapshot of increases) that lasted `seconds`:
    rps, error_ratio, p50/p95/p99 latency (ms), TTFT p50 (ms). The latency histogram is the
    gateway's (ms); `latency_scale` 1000 when it is the servers' own (seconds)."""
    out: dict[str, dict[str, Any]] = {}
    for version, st in sorted(win.items()):
        stats: dict[str, Any] = {
            "rps": st.requests / seconds if seconds else None,
            "error_ratio": st.errors / st.requests if st.requests else None,
        }
        lat = _buckets(st.histograms.get("latency"), latency_scale)
        for q in QUANTILES:
            stats[f"p{int(q * 100)}_ms"] = quantile(q, lat)
        stats["ttft_p50_ms"] = quantile(0.5, _buckets(st.histograms.get("ttft"), 1000.0))
        out[version] = stats
    return out


def from_prometheus(url: str, seconds: float = PROMETHEUS_WINDOW_S) -> dict[str, dict[str, Any]]:
    """The last `seconds` through Prometheus: per-series increase(), then summed by version."""
    from vllm_canary.rollout.metrics import PrometheusSource

    parts = PrometheusSource(url).increase(seconds)
    has_traffic = any(n == "istio_requests_total" for n, _, _ in parts["gateway"])
    return from_window(to_snapshot(parts["gateway"] if has_traffic else None, parts["servers"]),
                       seconds, 1.0 if has_traffic else 1000.0)


def from_scrape(state: stackstate.StackState, seconds: float) -> dict[str, dict[str, Any]]:
    """Two direct scrapes `seconds` apart; raises NotRunningError when nothing answers."""
    from vllm_canary.rollout.metrics import ScrapeSource

    source = ScrapeSource(state.gateway_metrics_url,
                          {v: s.metrics_url for v, s in state.servers.items()})
    try:
        before, t0 = source.snapshot(), time.monotonic()
        time.sleep(seconds)
        after = source.snapshot()
    except OSError as exc:
        raise NotRunningError(f"cannot read metrics from the stack: {exc}") from None
    gateway = "gateway" in source.tracker.targets  # else the servers' own latency (s)
    return from_window(window(before, after, count_new=True), time.monotonic() - t0,
                       1.0 if gateway else 1000.0)


def _fmt(value: Any, kind: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    return f"{value:.1f}" if kind == "ms" else f"{value:.2f}"


def run(args: argparse.Namespace) -> int:
    state = stackstate.load()
    if state is None:
        raise NotRunningError("no running local stack found: start one with `vllm-canary up`")
    if args.window <= 0:
        raise UserError("--window must be more than 0 seconds")
    from vllm_canary.gateway.adminclient import AdminClient

    weights = AdminClient(state.admin_url, state.admin_token).routes()["weights"]
    source = "prometheus"
    stats: dict[str, dict[str, Any]] = {}
    if state.prometheus_url and not args.no_prometheus:
        try:
            stats = from_prometheus(state.prometheus_url)
        except (OSError, ValueError):
            stats = {}
    if not stats:
        source = f"direct scrape over {args.window:g}s"
        stats = from_scrape(state, args.window)
    versions = sorted(set(stats) | set(weights))
    if args.json:
        print(json.dumps({"source": source, "weights": weights, "versions": stats}, indent=2))
        return 0
    print(f"gateway {state.gateway_url}   (numbers from {source})")
    print(f"{'version':<9}{'weight':>7}{'rps':>9}{'errors':>9}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p99 ms':>9}{'ttft p50':>10}")
    for v in versions:
        s = stats.get(v, {})
        print(f"{v:<9}{weights.get(v, '-')!s:>7}{_fmt(s.get('rps'), 'n'):>9}"
              f"{_fmt(s.get('error_ratio'), 'pct'):>9}{_fmt(s.get('p50_ms'), 'ms'):>9}"
              f"{_fmt(s.get('p95_ms'), 'ms'):>9}{_fmt(s.get('p99_ms'), 'ms'):>9}"
              f"{_fmt(s.get('ttft_p50_ms'), 'ms'):>10}")
    return 0

