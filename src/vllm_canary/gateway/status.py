"""`vllm-canary status`: per-version traffic, errors, latency percentiles, TTFT and weights.

Reads Prometheus when the stack runs one (the same PromQL dashboards use), else scrapes the
gateway and the servers twice, `--window` seconds apart, and computes the same numbers.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vllm_canary import promserver, stackstate
from vllm_canary.errors import NotRunningError, UserError

SEL = 'reporter="destination",destination_service_name="vllm-service"'
QUANTILES = (0.5, 0.95, 0.99)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per-version RPS, errors, p50/p95/p99, TTFT and weights")
    p.add_argument("--window", type=float, default=5.0,
                   help="seconds to measure over when no Prometheus runs (default 5)")
    p.add_argument("--no-prometheus", action="store_true", help="scrape directly")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(a: Samples, b: Samples) -> Samples:
    return {k: v - a.get(k, 0.0) for k, v in b.items()}


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


def from_samples(gw: Samples, servers: Samples, seconds: float) -> dict[str, dict[str, Any]]:
    """Per-version stats from counter deltas over `seconds`."""
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"requests": 0.0, "errors": 0.0})
    lat: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    ttft: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (name, labels), value in gw.items():
        lab = dict(labels)
        if lab.get("reporter") != "destination" or lab.get("destination_service_name") != \
                "vllm-service":
            continue
        version = lab.get("destination_version", "unknown")
        if name == "istio_requests_total":
            rows[version]["requests"] += value
            if lab.get("response_code", "").startswith("5"):
                rows[version]["errors"] += value
        elif name == "istio_request_duration_milliseconds_bucket":
            lat[version][float(lab["le"])] += value
    for (name, labels), value in servers.items():
        lab = dict(labels)
        if name == "vllm_time_to_first_token_seconds_bucket":
            ttft[lab.get("version", "unknown")][float(lab["le"]) * 1000.0] += value
    out = {}
    for version, row in sorted(rows.items()):
        stats: dict[str, Any] = {
            "rps": row["requests"] / seconds if seconds else None,
            "error_ratio": row["errors"] / row["requests"] if row["requests"] else None,
        }
        for q in QUANTILES:
            stats[f"p{int(q * 100)}_ms"] = quantile(q, lat[version])
        stats["ttft_p50_ms"] = quantile(0.5, ttft[version])
        out[version] = stats
    return out


def from_prometheus(url: str) -> dict[str, dict[str, Any]]:
    def by_version(promql: str) -> dict[str, float]:
        return {r["metric"].get("destination_version") or r["metric"].get("version", "unknown"):
                float(r["value"][1]) for r in promserver.query(url, promql)}

    rps = by_version(f"sum by (destination_version) (rate(istio_requests_total{{{SEL}}}[1m]))")
    errors = by_version("sum by (destination_version) "
                        f'(rate(istio_requests_total{{{SEL},response_code=~"5.."}}[1m]))')
    out: dict[str, dict[str, Any]] = {}
    for version, value in sorted(rps.items()):
        out[version] = {"rps": value,
                        "error_ratio": errors.get(version, 0.0) / value if value else None}
    for q in QUANTILES:
        lat = by_version(f"histogram_quantile({q}, sum by (destination_version, le) "
                         f"(rate(istio_request_duration_milliseconds_bucket{{{SEL}}}[1m])))")
        for version, value in lat.items():
            out.setdefault(version, {})[f"p{int(q * 100)}_ms"] = value
    ttft = by_version("histogram_quantile(0.5, sum by (version, le) "
                      "(rate(vllm_time_to_first_token_seconds_bucket[1m]))) * 1000")
    for version, value in ttft.items():
        out.setdefault(version, {})["ttft_p50_ms"] = value
    return out


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
        server_urls = [s.metrics_url for s in state.servers.values()]
        try:
            gw0, sv0, t0 = scrape(state.gateway_metrics_url), _merge(server_urls), time.monotonic()
            time.sleep(args.window)
            gw1, sv1 = scrape(state.gateway_metrics_url), _merge(server_urls)
        except OSError as exc:
            raise NotRunningError(f"cannot read metrics from the stack: {exc}") from None
        stats = from_samples(_delta(gw0, gw1), _delta(sv0, sv1), time.monotonic() - t0)
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


def _merge(urls: list[str]) -> Samples:
    out: Samples = {}
    for url in urls:
        try:
            out.update(scrape(url))
        except OSError:
            continue  # a server that is down shows no TTFT rather than failing the command
    return out
