"""Prometheus metrics of one model server. Names are a contract (dashboards, alerts and the
rollout analysis query them); every series carries `version` and `model` labels."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `*_created` samples double the exposition and no query of ours reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
                   15.0, 20.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
UTIL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LABELS = ("version", "model")
EXPECTED_STATUSES = ("200", "400", "404", "413", "499", "500", "502", "503", "504")

log = logging.getLogger("vllm_canary.server")


def model_label(configured: str, served: Iterable[str]) -> str:
    """The `model` label of a server's series: the configured name, else the engine's first
    served model, else "unknown" (an upstream that did not answer at start), with a warning
    that says how to pin it."""
    model = configured or next(iter(served), "")
    if not model:
        log.warning("no model name known at start (upstream not reachable?): metrics are "
                    "labelled model=\"unknown\"; pass --model-name to set it")
    return model or "unknown"


class ServerMetrics:
    """The server's series, registered in `registry` (one per server; no global state)."""

    def __init__(self, registry: CollectorRegistry, version: str, model: str, engine: str):
        self.registry = registry
        self._labels = {"version": version, "model": model}
        self.requests = Counter(
            "vllm_requests", "Requests served, by HTTP status code.",
            [*LABELS, "status"], registry=registry,
        )
        self.latency = Histogram(
            "vllm_request_latency_seconds", "End-to-end request latency.",
            LABELS, buckets=LATENCY_BUCKETS, registry=registry,
        ).labels(**self._labels)
        self.ttft = Histogram(
            "vllm_time_to_first_token_seconds", "Time from request to its first output token.",
            LABELS, buckets=TTFT_BUCKETS, registry=registry,
        ).labels(**self._labels)
        self.token_latency = Histogram(
            "vllm_token_latency_seconds", "Latency per output token (inter-token gap).",
            LABELS, buckets=TOKEN_BUCKETS, registry=registry,
        ).labels(**self._labels)
        self.gpu_utilization = Histogram(
            "vllm_gpu_utilization",
            "Accelerator utilization (0..1) sampled at request start; simulated by `sim`.",
            LABELS, buckets=UTIL_BUCKETS, registry=registry,
        ).labels(**self._labels)
        self.prompt_tokens = Counter(
            "vllm_prompt_tokens", "Prompt tokens processed.", LABELS, registry=registry,
        ).labels(**self._labels)
        self.generation_tokens = Counter(
            "vllm_generation_tokens", "Output tokens generated.", LABELS, registry=registry,
        ).labels(**self._labels)
        self.in_flight = Gauge(
            "vllm_requests_in_flight", "Requests being served now.", LABELS, registry=registry,
        ).labels(**self._labels)
        self.ready = Gauge(
            "vllm_engine_ready", "1 when the engine is ready to serve.",
            [*LABELS, "engine"], registry=registry,
        ).labels(engine=engine, **self._labels)
        # Every relayed request (engines vllm and upstream) by vLLM route: `endpoint` is one of
        # observe.VLLM_ROUTES or "other", so the label stays bounded whatever clients send.
        self.api_requests = Counter(
            "vllm_api_requests", "Relayed requests, by vLLM endpoint and HTTP status code.",
            [*LABELS, "endpoint", "status"], registry=registry,
        )
        self._by_status: dict[int, Any] = {}
        self._by_endpoint: dict[tuple[str, int], Any] = {}
        # Pre-create the statuses we answer with: Prometheus' increase()/rate() count from a
        # series' first sample, so errors that appear between two scrapes would be lost.
        for status in EXPECTED_STATUSES:
            self.requests.labels(status=status, **self._labels)

    def count(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:  # labels() costs a few µs a call: each child is looked up once
            child = self._by_status[status] = self.requests.labels(status=str(status),
                                                                   **self._labels)
        child.inc()

    def record(self, status: int, latency_s: float, ttft_s: float | None,
               prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Count one served answer (seconds; token counts None when unknown): the served
        twin of ShadowMetrics.record."""
        self.count(status)
        self.latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.inc(completion_tokens)

    def count_api(self, endpoint: str, status: int) -> None:
        """One relayed request; `endpoint` must come from observe.endpoint_label."""
        key = (endpoint, status)
        child = self._by_endpoint.get(key)
        if child is None:
            child = self._by_endpoint[key] = self.api_requests.labels(
                endpoint=endpoint, status=str(status), **self._labels)
        child.inc()
