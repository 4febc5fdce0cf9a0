"""Istio's standard metrics, so every query written for the mesh (Flagger, Argo Rollouts,
Grafana, our alerts) runs unchanged against the local gateway; plus the gateway's own series.

Names, labels and buckets are Istio's: `istio_requests_total`,
`istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`, reported
as `reporter="destination"` (what the destination workload's sidecar would report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Istio's default buckets for request duration (milliseconds) and sizes (bytes).
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                       60000, 300000, 600000, 1800000, 3600000)
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)

# Envoy prints response flags in this order (access logs, Istio's response_flags label).
FLAG_ORDER = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "URX", "NR", "DI", "FI", "RL", "DC",
              "SI", "UPE")

LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_app", "source_version",
    "source_canonical_service", "destination_workload", "destination_workload_namespace",
    "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "request_protocol",
    "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)


@dataclass(frozen=True, slots=True)
class DestinationLabels:
    """Where a request went, as Istio labels it (`unknown` when no workload was reached)."""

    workload: str = "unknown"
    namespace: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"
    service: str = "unknown"

    @property
    def service_name(self) -> str:
        return self.service.split(".", 1)[0]

    @staticmethod
    def of(host: str, version: str | None, app: str | None = None,
           workload: str | None = None) -> DestinationLabels:
        parts = host.split(".")
        namespace = parts[1] if len(parts) > 2 else "default"
        app = app or parts[0].removesuffix("-service")
        version = version or "unknown"
        return DestinationLabels(workload or f"{app}-{version}", namespace, app, version, host)


UNKNOWN = DestinationLabels()


class Telemetry:
    """The gateway's metrics in a registry passed in (no global state)."""

    def __init__(self, registry: CollectorRegistry, source_workload: str = "vllm-canary-gateway",
                 source_namespace: str = "default") -> None:
        self.source = (source_workload, source_namespace, source_workload, "unknown",
                       source_workload)
        self.requests = Counter("istio_requests", "Requests handled, as Istio counts them.",
                                LABELS, registry=registry)
        self.duration = Histogram("istio_request_duration_milliseconds",
                                  "Request duration in milliseconds, as Istio measures it.",
                                  LABELS, buckets=DURATION_BUCKETS_MS, registry=registry)
        self.request_bytes = Histogram("istio_request_bytes", "Request body sizes in bytes.",
                                       LABELS, buckets=SIZE_BUCKETS, registry=registry)
        self.response_bytes = Histogram("istio_response_bytes", "Response body sizes in bytes.",
                                        LABELS, buckets=SIZE_BUCKETS, registry=registry)
        self.upstream_healthy = Gauge(
            "vllm_canary_gateway_upstream_healthy",
            "1 when the upstream passes active health checks and is not ejected.",
            ("upstream", "destination_workload", "destination_version"), registry=registry)
        self.route_weight = Gauge(
            "vllm_canary_gateway_route_weight", "Weight of a destination in an http route.",
            ("virtualservice", "route", "destination_version"), registry=registry)
        self.routes_generation = Gauge(
            "vllm_canary_gateway_routes_generation",
            "Generation of the routing table (counts reloads and weight changes).",
            registry=registry)
        self.mirrored = Counter(
            "vllm_canary_gateway_mirror_requests",
            "Mirrored (shadow) requests; their answers are discarded and not in istio_*.",
            ("destination_version", "response_code"), registry=registry)
        self._children: dict[tuple[DestinationLabels, int, str], tuple[Any, ...]] = {}
        self.mirror_dropped = Counter(
            "vllm_canary_gateway_mirror_dropped",
            "Mirror copies not sent; reason=saturated: the version already had the most "
            "copies in flight that mirroring may take (gateway/mirror.py).",
            ("destination_version", "reason"), registry=registry)

    def record(self, dest: DestinationLabels, code: int, flags: list[str], duration_s: float,
               request_bytes: int, response_bytes: int) -> None:
        flag_text = ",".join(sorted(set(flags), key=FLAG_ORDER.index)) if flags else "-"
        key = (dest, code, flag_text)
        children = self._children.get(key)
        if children is None:  # label sets are few; resolving them is most of the cost
            values = (
                "destination", *self.source, dest.workload, dest.namespace, dest.app,
                dest.version, dest.service, dest.service_name, dest.namespace, dest.app,
                dest.version, "http", str(code), "", flag_text, "none",
            )
            children = self._children[key] = (
                self.requests.labels(*values), self.duration.labels(*values),
                self.request_bytes.labels(*values), self.response_bytes.labels(*values))
        children[0].inc()
        children[1].observe(duration_s * 1000.0)
        children[2].observe(request_bytes)
        children[3].observe(response_bytes)
