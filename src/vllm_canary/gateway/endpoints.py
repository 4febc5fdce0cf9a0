"""Upstream endpoints: label sets mapped to URLs, their health, and load balancing.

Locally there is no Kubernetes endpoint discovery, so `--upstream v1=URL` says "the pods
labelled `version: v1` answer at URL" (an endpoints YAML may give arbitrary label sets). A
DestinationRule subset then selects endpoints by labels, exactly as it selects pods.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from vllm_canary.config import yaml_problem
from vllm_canary.errors import UserError
from vllm_canary.gateway.routing import Destination, OutlierDetection, RouteTable


@dataclass(eq=False)
class Endpoint:
    """One upstream base URL and the pod labels it stands for."""

    url: str
    labels: Mapping[str, str]
    workload: str = ""
    healthy: bool = True  # from active health checks
    ejected_until: float = 0.0  # from outlier detection
    ejections: int = 0
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    in_flight: int = 0
    failed_checks: int = 0
    last_error: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.workload:
            self.workload = f"{self.labels.get('app', 'vllm')}-{self.version}"

    @property
    def version(self) -> str:
        return self.labels.get("version", "unknown")


def parse_upstream(spec: str) -> Endpoint:
    """`v1=http://127.0.0.1:8101` (labels version=v1) or `app=x,version=v1=URL`."""
    key, sep, url = spec.partition("=http")
    if not sep or not key:
        raise UserError(f"--upstream {spec!r}: expected SUBSET=URL, e.g. v1=http://127.0.0.1:8101")
    url = "http" + url
    if "=" in key:
        labels = dict(part.split("=", 1) for part in key.split(",") if "=" in part)
    else:
        labels = {"version": key}
    return Endpoint(url, labels)


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """A YAML list of `{url, labels, workload?}`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read endpoints file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"endpoints file {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"endpoints file {path} is not valid YAML: {yaml_problem(exc)}") from None
    items = data.get("endpoints") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UserError(f"endpoints file {path}: expected a list of {{url, labels}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not isinstance(
            item.get("labels", {}), dict
        ):
            raise UserError(f"endpoints file {path}: item {i + 1} needs url and labels")
        labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
        out.append(Endpoint(item["url"], labels, str(item.get("workload") or "")))
    return out


class Endpoints:
    """All endpoints, selection by DestinationRule subset, and passive/active health."""

    def __init__(self, endpoints: Iterable[Endpoint], clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.all = list(endpoints)
        self.clock = clock
        self.rng = rng or random.Random()
        self._rr = 0

    def select(self, table: RouteTable, dest: Destination) -> list[Endpoint]:
        """Endpoints whose labels include the subset's selector (all of them without a subset)."""
        if dest.subset is None:
            return self.all
        svc = table.services.get(dest.host)
        selector = svc.subsets.get(dest.subset, {}) if svc else {}
        return [e for e in self.all if all(e.labels.get(k) == v for k, v in selector.items())]

    def available(self, candidates: list[Endpoint]) -> list[Endpoint]:
        now = self.clock()
        return [e for e in candidates if e.healthy and e.ejected_until <= now]

    def pick(self, candidates: list[Endpoint], policy: str = "ROUND_ROBIN",
             exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """A healthy endpoint by the DestinationRule's load-balancer policy, or None (UH)."""
        live = self.available(candidates)
        if not live:
            return None
        tried = set(exclude)  # once, not once per endpoint
        fresh = [e for e in live if e not in tried] or live
        if len(fresh) == 1:
            return fresh[0]
        if policy == "RANDOM":
            return self.rng.choice(fresh)
        if policy == "LEAST_REQUEST":
            a, b = self.rng.sample(fresh, 2)  # Envoy's power of two choices
            return a if a.in_flight <= b.in_flight else b
        self._rr += 1
        return fresh[self._rr % len(fresh)]

    def report(self, ep: Endpoint, status: int | None, outlier: OutlierDetection | None,
               peers: list[Endpoint]) -> None:
        """Passive health: `status` None means no response (connect failure, reset, timeout)."""
        if outlier is None:
            return
        failed_5xx = status is None or status >= 500
        failed_gw = status is None or status in (502, 503, 504)
        ep.consecutive_5xx = ep.consecutive_5xx + 1 if failed_5xx else 0
        ep.consecutive_gateway = ep.consecutive_gateway + 1 if failed_gw else 0
        trip = (outlier.consecutive_5xx and ep.consecutive_5xx >= outlier.consecutive_5xx) or (
            outlier.consecutive_gateway and ep.consecutive_gateway >= outlier.consecutive_gateway
        )
        if not trip:
            return
        now = self.clock()
        ejected = sum(1 for p in peers if p.ejected_until > now)
        # Envoy caps ejections at maxEjectionPercent of the pool, but always allows one.
        if ejected > 0 and (ejected + 1) * 100 > outlier.max_ejection_percent * len(peers):
            return
        ep.ejections += 1
        ep.ejected_until = now + outlier.base_ejection * ep.ejections
        ep.consecutive_5xx = ep.consecutive_gateway = 0

    async def health_loop(self, session: aiohttp.ClientSession, path: str, interval: float,
                          timeout: float = 2.0, unhealthy_threshold: int = 3,
                          on_change: Callable[[Endpoint], Any] | None = None) -> None:
        """Active health checks: GET url+path every `interval`; 2xx is healthy. Like Envoy's
        `unhealthy_threshold`, one slow answer on a busy machine does not eject a pod."""
        while True:
            await asyncio.gather(*(self._check(session, e, path, timeout, unhealthy_threshold,
                                               on_change) for e in self.all))
            await asyncio.sleep(interval)

    async def _check(self, session: aiohttp.ClientSession, ep: Endpoint, path: str,
                     timeout: float, threshold: int,
                     on_change: Callable[[Endpoint], Any] | None) -> None:
        try:
            async with session.get(ep.url + path,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                ok = 200 <= resp.status < 300
                ep.last_error = "" if ok else f"health check answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, ep.last_error = False, f"health check failed: {exc.__class__.__name__}"
        ep.failed_checks = 0 if ok else ep.failed_checks + 1
        healthy = ok or (ep.healthy and ep.failed_checks < threshold)
        if healthy != ep.healthy:
            ep.healthy = healthy
            if on_change is not None:
                on_change(ep)
