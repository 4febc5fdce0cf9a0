"""Metric source for a machine with no Prometheus: scrape the gateway's and the servers'
/metrics directly (parsed by prometheus_client) at every poll."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from vllm_canary.rollout.metrics.base import Snapshot
from vllm_canary.rollout.metrics.samples import SERVICE, Sample, to_snapshot


def scrape(url: str, timeout: float = 3.0) -> list[Sample]:
    """All samples of one exposition; raises OSError/ValueError when it cannot be read."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


class ScrapeSource:
    def __init__(self, gateway: str | None, servers: dict[str, str] | list[str],
                 service: str = SERVICE) -> None:
        """`gateway` and `servers` (by version) are /metrics URLs, as a rollout's target
        dict records them."""
        self.gateway_url = gateway
        self.server_urls = (dict(servers) if isinstance(servers, dict)
                            else {f"server{i}": u for i, u in enumerate(servers)})
        self.service = service

    def snapshot(self) -> Snapshot:
        gateway = None
        if self.gateway_url:
            try:
                gateway = scrape(self.gateway_url)
            except (OSError, ValueError):
                gateway = None
        servers: list[Sample] = []
        down = []
        for version, url in self.server_urls.items():
            try:
                servers.extend(scrape(url))
            except (OSError, ValueError):
                down.append(version)  # no data from it, and a sign the process is gone
        if gateway is None and not servers:
            raise OSError("no metrics endpoint answered")
        return to_snapshot(gateway, servers, self.service, down)

    def describe(self) -> str:
        where = self.gateway_url or "servers"
        return f"direct scrape of {where} (+{len(self.server_urls)} servers)"
