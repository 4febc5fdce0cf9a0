"""Traffic mirroring (Istio `mirror`/`mirrors`): fire-and-forget copies whose answers are read,
discarded and counted, with the host marked `-shadow` as Envoy does.

Mirrors never take resources from served traffic: each destination version has a bound on the
copies in flight to it (`max_in_flight`, default 64); while a version is at that bound it is
saturated, and further copies are dropped and counted in
`vllm_canary_gateway_mirror_dropped_total{destination_version, reason="saturated"}`. A copy
runs in its own task on its own connection pool, so a slow or dead v2 can delay no client.

`set_mirror` is what the admin API's `PUT /mirror` and the rollout's `setMirror` step do: set
`mirror` + `mirrorPercentage` (Istio's fields, as the chart renders them) on the weighted
routes, or remove them at 0%.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.endpoints import Endpoints
from vllm_canary.gateway.h1server import Incoming
from vllm_canary.gateway.istio import RoutesError
from vllm_canary.gateway.routing import Destination
from vllm_canary.gateway.store import RouteStore, Snapshot, WeightError
from vllm_canary.gateway.telemetry import Telemetry
from vllm_canary.server.shadow import shadow_host

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "Mirror", "mirror_of", "set_mirror", "shadow_host"]

DEFAULT_MAX_IN_FLIGHT = 64  # per destination version


class Mirror:
    """Sends copies in the background; at most `max_in_flight` at once per destination version
    (others are dropped and counted), so a slow mirror target can never hold up real traffic."""

    def __init__(self, store: RouteStore, endpoints: Endpoints, telemetry: Telemetry,
                 session: aiohttp.ClientSession, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout: float = 300.0) -> None:
        self.store, self.endpoints, self.telemetry = store, endpoints, telemetry
        self.session, self.max_in_flight, self.timeout = session, max_in_flight, timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight: Counter[str] = Counter()
        for svc in store.table.services.values():  # so increase() sees the first drop
            for subset in svc.subsets:
                telemetry.mirror_dropped.labels(subset, "saturated")

    def send(self, dest: Destination, request: Incoming, headers: CIMultiDict[str],
             body: bytes) -> None:
        key = dest.subset or dest.host
        if self.in_flight[key] >= self.max_in_flight:
            self.telemetry.mirror_dropped.labels(key, "saturated").inc()
            return
        shadow = CIMultiDict(headers)
        shadow["host"] = shadow_host(request.host)
        self.in_flight[key] += 1
        task = asyncio.create_task(self._copy(dest, request.method, request.path_qs, shadow,
                                              body))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.in_flight[key] -= 1

        task.add_done_callback(done)

    async def _copy(self, dest: Destination, method: str, path_qs: str,
                    headers: CIMultiDict[str], body: bytes) -> None:
        ep = self.endpoints.pick(self.endpoints.select(self.store.table, dest))
        version = ep.version if ep else (dest.subset or "unknown")
        code = 0
        if ep is not None:
            try:
                async with asyncio.timeout(self.timeout), self.session.request(
                    method, ep.url + path_qs, headers=headers, data=body or None,
                    allow_redirects=False,
                ) as resp:
                    async for _ in resp.content.iter_any():
                        pass
                    code = resp.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                code = 0
        self.telemetry.mirrored.labels(version, str(code)).inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def mirror_of(store: RouteStore) -> dict[str, Any]:
    """`{"subset": ..., "percent": ...}` of the first weighted route's mirror ({} when none)."""
    objs = store.snapshot.objects
    for vi, ri in store.weighted_routes():
        http = objs.virtualservices[vi]["spec"]["http"][ri]
        if "mirror" in http:
            pct = (http.get("mirrorPercentage") or {}).get("value", 100.0)
            return {"subset": http["mirror"].get("subset"), "percent": float(pct)}
    return {}


def set_mirror(store: RouteStore, subset: str, percent: float,
               route: str | None = None) -> Snapshot:
    """Mirror `percent`% of the weighted routes' (or the named route's) traffic to `subset`;
    0 removes the mirror. Raises WeightError (a 400) on a bad subset or percentage."""
    known = {s for svc in store.table.services.values() for s in svc.subsets}
    if subset not in known:
        raise WeightError(f"unknown subset {subset!r} (known: {', '.join(sorted(known))})",
                          "subset")
    if isinstance(percent, bool) or not isinstance(percent, int | float) \
            or not 0 <= percent <= 100:
        raise WeightError("percent must be a number from 0 to 100", "percent")
    targets = store.weighted_routes(route)
    if not targets:
        raise WeightError(f"no route named {route!r}" if route else
                          "no route has more than one destination", "route")
    objs = store.snapshot.objects.copy()
    for vi, ri in targets:
        http = objs.virtualservices[vi]["spec"]["http"][ri]
        http.pop("mirrors", None)
        for legacy in ("mirrorPercent", "mirror_percent"):
            http.pop(legacy, None)
        if percent == 0:
            http.pop("mirror", None)
            http.pop("mirrorPercentage", None)
            continue
        host = http["route"][0]["destination"]["host"]
        http["mirror"] = {"host": host, "subset": subset}
        http["mirrorPercentage"] = {"value": float(percent)}
    try:
        table = compile_table(objs)
    except RoutesError as exc:
        raise WeightError(exc.message, "mirror") from None
    return store._publish(objs, table)  # one swap, as a weight change


def mirrored_routes_file(source: Path, out: Path, subset: str, percent: float) -> Path:
    """Write a copy of the routes file `source` to `out` with `mirror` + `mirrorPercentage`
    set on every http route that has more than one destination (what `up --mirror-v2 PCT`
    runs). Raises UserError on a percentage outside 0..100 or when no route is weighted."""
    import yaml

    from vllm_canary import atomic
    from vllm_canary.errors import UserError
    from vllm_canary.gateway.istio import load_file

    if not 0 < percent <= 100:
        raise UserError(f"--mirror-v2 {percent:g}: give a percentage above 0 and at most 100")
    objs = load_file(source).copy()
    changed = 0
    for vs in objs.virtualservices:
        for http in vs.get("spec", {}).get("http", []) or []:
            dests = http.get("route") or []
            if len(dests) < 2:
                continue
            http["mirror"] = {"host": dests[0]["destination"]["host"], "subset": subset}
            http["mirrorPercentage"] = {"value": float(percent)}
            changed += 1
    if not changed:
        raise UserError(f"--mirror-v2: no route in {source} splits traffic between versions")
    text = f"# {source} with {percent:g}% of the weighted routes mirrored to {subset}\n"
    text += yaml.safe_dump_all([*objs.virtualservices, *objs.destinationrules], sort_keys=False)
    atomic.write_text(out, text)
    return out
