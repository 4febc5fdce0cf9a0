"""Both metric sources reduce to flat samples (name, labels, value); this folds them into a
per-version Snapshot using Istio's gateway series for traffic and the servers' own series for
time-to-first-token and inter-token latency."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from vllm_canary.rollout.metrics.base import Histogram, Snapshot, VersionStats

Sample = tuple[str, dict[str, str], float]
SERVICE = "vllm-service"
# histogram key -> (series name without _bucket, version label)
GATEWAY_HIST = {"latency": ("istio_request_duration_milliseconds", "destination_version")}
SERVER_HIST = {"ttft": ("vllm_time_to_first_token_seconds", "version"),
               "itl": ("vllm_token_latency_seconds", "version")}
FALLBACK_HIST = {"latency": ("vllm_request_latency_seconds", "version")}


def _gateway_series(labels: dict[str, str], service: str) -> bool:
    return (labels.get("reporter", "destination") == "destination"
            and labels.get("destination_service_name", service) == service)


def _histograms(samples: list[Sample], spec: dict[str, tuple[str, str]],
                service: str | None) -> dict[str, dict[str, Histogram]]:
    """{version: {key: Histogram}} summing all series of each histogram by version and le."""
    out: dict[str, dict[str, Histogram]] = defaultdict(dict)
    for key, (name, vlabel) in spec.items():
        acc: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for sname, labels, value in samples:
            if sname != name + "_bucket" or vlabel not in labels or "le" not in labels:
                continue
            if service is not None and not _gateway_series(labels, service):
                continue
            acc[labels[vlabel]][float(labels["le"])] += value
        for version, buckets in acc.items():
            les = sorted(buckets)
            finite = [le for le in les if not math.isinf(le)]
            cum = [buckets[le] for le in finite] + [buckets.get(math.inf, 0.0)]
            out[version][key] = Histogram(finite, cum)
    return out


def _health(gateway: list[Sample]) -> dict[str, bool]:
    """Per version: up unless every endpoint the gateway health-checks is unhealthy."""
    seen: dict[str, bool] = {}
    for name, labels, value in gateway:
        if name == "vllm_canary_gateway_upstream_healthy" and "destination_version" in labels:
            v = labels["destination_version"]
            seen[v] = seen.get(v, False) or value > 0
    return seen


def to_snapshot(gateway: list[Sample] | None, servers: Iterable[Sample],
                service: str = SERVICE, down: Iterable[str] = ()) -> Snapshot:
    """Traffic from the gateway when it answered, else from the servers' own counters."""
    servers = list(servers)
    snap: dict[str, VersionStats] = {}
    if gateway is not None:
        for name, labels, value in gateway:
            if name not in ("istio_requests_total", "istio_requests") or not _gateway_series(
                    labels, service) or "destination_version" not in labels:
                continue
            st = snap.setdefault(labels["destination_version"], VersionStats())
            st.requests += value
            if labels.get("response_code", "").startswith("5"):
                st.errors += value
        hist = _histograms(gateway, GATEWAY_HIST, service)
        for version, healthy in _health(gateway).items():
            snap.setdefault(version, VersionStats()).up = healthy
    else:
        for name, labels, value in servers:
            if name not in ("vllm_requests_total", "vllm_requests") or "version" not in labels:
                continue
            st = snap.setdefault(labels["version"], VersionStats())
            st.requests += value
            if labels.get("status", "").startswith("5"):
                st.errors += value
        hist = _histograms(servers, FALLBACK_HIST, None)
    for version, hs in list(hist.items()) + list(_histograms(servers, SERVER_HIST, None).items()):
        snap.setdefault(version, VersionStats()).histograms.update(hs)
    for version in down:  # its own /metrics did not answer: the process is gone
        snap.setdefault(version, VersionStats()).up = False
    return snap
