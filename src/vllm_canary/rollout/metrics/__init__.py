"""Metric sources by name: where `rollout` and `analyze` read per-version telemetry."""

from __future__ import annotations

from vllm_canary.rollout.metrics.base import Histogram, MetricSource, Snapshot, VersionStats
from vllm_canary.rollout.metrics.prometheus import PrometheusSource
from vllm_canary.rollout.metrics.scrape import ScrapeSource

SOURCES: dict[str, type] = {"prometheus": PrometheusSource, "scrape": ScrapeSource}

__all__ = ["SOURCES", "Histogram", "MetricSource", "PrometheusSource", "ScrapeSource",
           "Snapshot", "VersionStats"]
