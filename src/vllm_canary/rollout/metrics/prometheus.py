"""Metric source for a Prometheus server (local or kube-prometheus-stack).

Rate before sum (prometheus/prometheus#13903): Prometheus computes every series' own
`increase()` and only then are the series summed by version, so a pod that goes away or
restarts between two polls changes nothing but its own series. Summing the raw counters and
subtracting two polls instead reads a departed pod's whole history as a reset, and a restart
as a small rise.

The windows. The first poll is the anchor T0: it reads the level of every counter
(`sum by (...) (x @ T0)`). Every later poll at T reads, for the whole span since the anchor,

    sum by (version, ...) (increase(x[T - T0] @ T))

and reports level + increase: a cumulative count that the controller differences between two
polls, as before. One increase over the whole span rather than a sum of per-poll increases,
because `increase()` extrapolates each series to the ends of its range (by up to 1.1 average
scrape intervals, or half of one where the series starts or stops inside it): over [T0, T]
that error is about one scrape interval's worth of traffic at each end and does not grow
with the number of polls, whereas summing per-poll increases would add one such error per
poll. The reported cumulative never goes down (a later, better estimate below an earlier one
is held at the earlier value) and is rounded to whole requests, so windows are never negative
and integer counts telescope: what reaches the analysis over a step is the increase over the
step, within about one scrape's worth. Every REBASE_S the anchor moves to now (the totals so
far become the new level), which keeps the range of the query bounded for a long-running
`analyze --serve` at the cost of about one scrape's worth per rebase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from vllm_canary.promserver import query as promql
from vllm_canary.rollout.metrics.base import Snapshot
from vllm_canary.rollout.metrics.samples import (
    FALLBACK_HIST,
    GATEWAY_HIST,
    SERVER_HIST,
    SERVICE,
    Sample,
    to_snapshot,
)

REBASE_S = 3600.0
Key = tuple[str, tuple[tuple[str, str], ...]]


class PrometheusSource:
    def __init__(self, url: str, service: str = SERVICE, timeout: float = 5.0,
                 now: Callable[[], float] = time.time, traffic: str = "istio") -> None:
        self.url = url.rstrip("/")
        # "front": requests and errors from the servers' own vllm_requests_total by version,
        # never Istio's destination_version (the pod's label: the base's for LoRA versions).
        self.traffic = traffic
        self.service = service
        self.timeout = timeout
        self.now = now
        self.anchor: float | None = None
        self.level: dict[Key, float] = {}  # every counter at the anchor
        self.reported: dict[Key, float] = {}  # the last cumulative returned (monotone)

    def _select(self) -> str:
        return f'reporter="destination",destination_service_name="{self.service}"'

    def counters(self) -> list[tuple[str, str, str, str]]:
        """(series name, selector, by-labels, part): every cumulative series a snapshot reads,
        part being "gateway" (Istio's) or "servers" (the model servers' own)."""
        sel, gw_by = self._select(), "destination_version, reporter, destination_service_name"
        out = [("istio_requests_total", sel, gw_by + ", response_code", "gateway")]
        out += [(name + "_bucket", sel, gw_by + ", le", "gateway")
                for name, _ in GATEWAY_HIST.values()]
        out.append(("vllm_requests_total", "", "version, status", "servers"))
        out += [(name + "_bucket", "", vlabel + ", le", "servers")
                for name, vlabel in (*SERVER_HIST.values(), *FALLBACK_HIST.values())]
        return out

    def _read(self, template: str) -> dict[str, list[Sample]]:
        """Run `template` (with {series}) once per counter; samples by part."""
        parts: dict[str, list[Sample]] = {"gateway": [], "servers": []}
        for name, sel, by, part in self.counters():
            expr = f"sum by ({by}) (" + template.format(series=f"{name}{{{sel}}}") + ")"
            parts[part] += [(name, dict(r["metric"]), float(r["value"][1]))
                            for r in promql(self.url, expr, self.timeout)]
        return parts

    def increase(self, seconds: float, at: float | None = None) -> dict[str, list[Sample]]:
        """Per-series `increase()` over the `seconds` before `at` (default now), summed by
        version: the window `vllm-canary status` shows, and the step of a snapshot."""
        at = self.now() if at is None else at
        return self._read(f"increase({{series}}[{max(1, round(seconds * 1000))}ms] @ {at:.3f})")

    def snapshot(self) -> Snapshot:
        t = self.now()
        if self.anchor is not None and t - self.anchor > REBASE_S:
            self.level, self.anchor = dict(self.reported), None
        if self.anchor is None:
            first = not self.level
            base = self._read(f"{{series}} @ {t:.3f}") if first else {}
            self.anchor = t
            if first:
                self.level = {_key(n, lab): v for s in base.values() for n, lab, v in s}
            parts: dict[str, list[Sample]] = {"gateway": [], "servers": []}
        else:
            parts = self.increase(t - self.anchor, t)
        cumulative = dict(self.level)
        for samples in parts.values():
            for n, lab, v in samples:
                if not math.isnan(v):
                    k = _key(n, lab)
                    cumulative[k] = cumulative.get(k, 0.0) + v
        for k, v in cumulative.items():
            self.reported[k] = max(self.reported.get(k, 0.0), float(round(v)))
        gateway = [_sample(k, v) for k, v in self.reported.items() if k[0].startswith("istio_")]
        servers = [_sample(k, v) for k, v in self.reported.items()
                   if not k[0].startswith("istio_")]
        gateway += [("vllm_canary_gateway_upstream_healthy", dict(r["metric"]),
                     float(r["value"][1])) for r in promql(
            self.url, "max by (destination_version) (vllm_canary_gateway_upstream_healthy)",
            self.timeout)]
        has_traffic = self.traffic != "front" and any(
            n.startswith("istio_requests") for n, _, _ in gateway)
        return to_snapshot(gateway if has_traffic else None, servers, self.service)

    def query_value(self, expr: str) -> float | None:
        """A custom metric's PromQL: the sum of its result, None when empty or NaN."""
        rows = promql(self.url, expr, self.timeout)
        values = [float(r["value"][1]) for r in rows]
        total = sum(values)
        return None if not values or total != total else total

    def describe(self) -> str:
        return f"Prometheus {self.url}"


def _key(name: str, labels: dict[str, str]) -> Key:
    return name, tuple(sorted(labels.items()))


def _sample(key: Key, value: float) -> Sample:
    return key[0], dict(key[1]), value
