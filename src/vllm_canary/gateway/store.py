"""The live routing table: loaded from the routes file, swapped atomically on reload or on a
weight change, with a generation number that counts every change."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_canary.gateway import crd
from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.istio import INT32_MAX, IstioObjects, RoutesError, load_file
from vllm_canary.gateway.routing import RouteTable, configured_weights, weights_of

log = logging.getLogger("vllm_canary.gateway")


def default_routes_path() -> Path:
    """The packaged routes the local stack executes (the chart's default routing)."""
    return Path(str(importlib.resources.files("vllm_canary") / "data" / "routes.yaml"))


def load_routes(path: Path) -> tuple[IstioObjects, RouteTable]:
    """Read, check against the Istio CRD schema (when available) and compile a routes file."""
    objs = load_file(path)
    table = compile_table(objs)  # first: its messages name the exact field
    schema = crd.find_crds()
    if schema is not None:
        crd.validate(objs, schema)
    return objs, table


class WeightError(ValueError):
    """A weight change the admin API refuses (a 400 with `param`)."""

    def __init__(self, message: str, param: str = "weights") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Snapshot:
    objects: IstioObjects
    table: RouteTable
    generation: int


class RouteStore:
    """Holds one Snapshot; readers take `store.table` (one attribute read, so always whole)."""

    def __init__(self, path: Path, on_change: Callable[[Snapshot], None] | None = None) -> None:
        self.path = path
        self.on_change = on_change
        self.last_error: str | None = None
        objs, table = load_routes(path)
        self._stamp = self._file_stamp()
        self.snapshot = Snapshot(objs, table, 1)

    @property
    def table(self) -> RouteTable:
        return self.snapshot.table

    def _publish(self, objs: IstioObjects, table: RouteTable) -> Snapshot:
        self.snapshot = Snapshot(objs, table, self.snapshot.generation + 1)
        if self.on_change is not None:
            self.on_change(self.snapshot)
        return self.snapshot

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self) -> Snapshot:
        """Re-read the file; a bad file keeps the old table and raises RoutesError."""
        self._stamp = self._file_stamp()
        try:
            objs, table = load_routes(self.path)
        except RoutesError as exc:
            self.last_error = exc.message
            raise
        self.last_error = None
        return self._publish(objs, table)

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file changes; errors are logged and kept in `last_error`."""
        while True:
            await asyncio.sleep(interval)
            if self._file_stamp() == self._stamp:
                continue
            try:
                snap = self.reload()
                log.info("routes reloaded from %s (generation %d)", self.path, snap.generation)
            except RoutesError as exc:
                log.error("routes file rejected, keeping the previous table: %s", exc.message)

    def weighted_routes(self, route: str | None = None) -> list[tuple[int, int]]:
        """(virtualservice index, http index) of the routes a weight change applies to."""
        found = []
        for vi, vhost in enumerate(self.table.virtual_hosts):
            for ri, r in enumerate(vhost.routes):
                if (route is None and r.weighted) or r.name == route:
                    found.append((vi, ri))
        return found

    def set_weights(self, weights: Mapping[str, Any], route: str | None = None) -> Snapshot:
        """Set destination weights by subset on the weighted routes (or the named one), at once.

        Weights are relative, as in Istio >= 1.15 (istio/istio#36069): whole numbers >= 0, not
        all 0, e.g. {v1: 1, v2: 1} is 50/50 and {v1: 300, v2: 100} is 75/25. A destination
        not named gets 0. Raises WeightError (param names the field) for what Istio refuses."""
        targets = self.weighted_routes(route)
        if not targets:
            raise WeightError(f"no route named {route!r}" if route else
                              "no route has more than one destination", "route")
        known = {s for svc in self.table.services.values() for s in svc.subsets}
        for subset, value in weights.items():
            if subset not in known:
                raise WeightError(f"unknown subset {subset!r} (known: {', '.join(sorted(known))})",
                                  f"weights.{subset}")
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 <= value <= INT32_MAX:
                raise WeightError(f"weight of {subset} must be a whole number >= 0 (weights "
                                  "are relative: v1=1 v2=1 is 50/50)", f"weights.{subset}")
        if sum(weights.values()) == 0:
            raise WeightError("total destination weight = 0: give at least one subset a "
                              "weight above 0 (Istio refuses a route whose weights are all 0)")
        objs = self.snapshot.objects.copy()
        for vi, ri in targets:
            vhost = self.table.virtual_hosts[vi]
            subsets = {d.subset for d in vhost.routes[ri].destinations}
            missing = set(weights) - subsets
            if missing:
                raise WeightError(f"route {vhost.routes[ri].name!r} has no destination for "
                                  f"{', '.join(sorted(missing))}", "weights")
            for dest in objs.virtualservices[vi]["spec"]["http"][ri]["route"]:
                dest["weight"] = int(weights.get(dest["destination"].get("subset"), 0))
        try:
            table = compile_table(objs)
        except RoutesError as exc:
            raise WeightError(exc.message) from None
        return self._publish(objs, table)

    def current_weights(self) -> dict[str, int | float]:
        """Percent of traffic per subset on the first weighted route (else the last route),
        from its relative weights: {v1: 1, v2: 1} reads as {v1: 50, v2: 50}."""
        routes = [r for vh in self.table.virtual_hosts for r in vh.routes]
        chosen = next((r for r in routes if r.weighted), routes[-1] if routes else None)
        return weights_of(chosen) if chosen is not None else {}

    def view(self) -> dict[str, Any]:
        """What `GET /routes` returns."""
        snap = self.snapshot
        routes = [{"virtualservice": vh.name, "name": r.name, "weights": weights_of(r),
                   "configured": configured_weights(r)}
                  for vh in snap.table.virtual_hosts for r in vh.routes]
        return {
            "virtualservices": snap.objects.virtualservices,
            "destinationrules": snap.objects.destinationrules,
            "weights": self.current_weights(),
            "routes": routes,
            "generation": snap.generation,
            "source": str(self.path),
            "last_error": self.last_error,
        }

