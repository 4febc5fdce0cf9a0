"""Metric source for a Prometheus server (local or kube-prometheus-stack): instant PromQL
queries of the cumulative series, summed by version; windows are differences between polls."""

from __future__ import annotations

from vllm_canary.promserver import query as promql
from vllm_canary.rollout.metrics.base import Snapshot
from vllm_canary.rollout.metrics.samples import (
    GATEWAY_HIST,
    SERVER_HIST,
    SERVICE,
    Sample,
    to_snapshot,
)


class PrometheusSource:
    def __init__(self, url: str, service: str = SERVICE, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.timeout = timeout

    def _select(self) -> str:
        return f'reporter="destination",destination_service_name="{self.service}"'

    def _samples(self, expr: str, name: str) -> list[Sample]:
        return [(name, dict(r["metric"]), float(r["value"][1]))
                for r in promql(self.url, expr, self.timeout)]

    def snapshot(self) -> Snapshot:
        sel = self._select()
        gateway = self._samples(
            f"sum by (destination_version, response_code, reporter, destination_service_name)"
            f" (istio_requests_total{{{sel}}})", "istio_requests_total")
        for name, _ in GATEWAY_HIST.values():
            gateway += self._samples(
                f"sum by (destination_version, le, reporter, destination_service_name)"
                f" ({name}_bucket{{{sel}}})", name + "_bucket")
        gateway += self._samples(
            "max by (destination_version) (vllm_canary_gateway_upstream_healthy)",
            "vllm_canary_gateway_upstream_healthy")
        servers: list[Sample] = []
        for name, vlabel in SERVER_HIST.values():
            servers += self._samples(f"sum by ({vlabel}, le) ({name}_bucket)", name + "_bucket")
        return to_snapshot(gateway or None, servers, self.service)

    def query_value(self, expr: str) -> float | None:
        """A custom metric's PromQL: the sum of its result, None when empty or NaN."""
        rows = promql(self.url, expr, self.timeout)
        values = [float(r["value"][1]) for r in rows]
        total = sum(values)
        return None if not values or total != total else total

    def describe(self) -> str:
        return f"Prometheus {self.url}"
