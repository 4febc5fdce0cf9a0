"""Metric source for a machine with no Prometheus: scrape the gateway's and the servers'
/metrics directly (parsed by prometheus_client) at every poll, and keep every target's series
apart (metrics.counters.SeriesTracker) so a pod that restarts or goes away between two polls
never corrupts a window."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from vllm_canary.rollout.metrics.base import Snapshot
from vllm_canary.rollout.metrics.counters import SeriesTracker
from vllm_canary.rollout.metrics.samples import SERVICE, Sample, to_snapshot


def scrape(url: str, timeout: float = 3.0) -> list[Sample]:
    """All samples of one exposition; raises OSError/ValueError when it cannot be read."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


class ScrapeSource:
    def __init__(self, gateway: str | None, servers: dict[str, str | list[str]] | list[str],
                 service: str = SERVICE, now: Callable[[], float] = time.time) -> None:
        """`gateway` and `servers` (by version: one URL, or one per pod) are /metrics URLs,
        as a rollout's target dict records them."""
        self.gateway_url = gateway
        named = (dict(servers) if isinstance(servers, dict)
                 else {f"server{i}": u for i, u in enumerate(servers)})
        self.server_urls: dict[str, list[str]] = {
            v: [u] if isinstance(u, str) else list(u) for v, u in named.items()}
        self.service = service
        self.now = now
        self.tracker = SeriesTracker()

    def snapshot(self) -> Snapshot:
        """Per version: the counts since this source's first poll plus the level then (see
        counters.py); raises OSError when no endpoint answered at all."""
        round_: dict[str, list[Sample] | None] = {}
        if self.gateway_url:
            round_["gateway"] = _try(self.gateway_url)
        for version, urls in self.server_urls.items():
            for url in urls:
                round_[f"{version} {url}"] = _try(url)
        if all(samples is None for samples in round_.values()):
            raise OSError("no metrics endpoint answered")
        totals = self.tracker.fold(round_, self.now())
        # Once the gateway has answered, its totals stay the traffic source: switching to the
        # servers' own counters for one poll would mix two different counts into a window.
        gateway = totals.get("gateway")
        servers = [s for name, samples in totals.items() if name != "gateway" for s in samples]
        down = [v for v, urls in self.server_urls.items()
                if all(round_[f"{v} {u}"] is None for u in urls)]
        return to_snapshot(gateway, servers, self.service, down)

    def describe(self) -> str:
        where = self.gateway_url or "servers"
        pods = sum(len(u) for u in self.server_urls.values())
        return f"direct scrape of {where} (+{pods} servers)"


def _try(url: str) -> list[Sample] | None:
    try:
        return scrape(url)
    except (OSError, ValueError):
        return None  # no data from it, and a sign the process is gone
