"""The pure routing core: compiled Istio routing tables and the decision for one request.

Semantics follow Istio's VirtualService: the virtual host is picked by authority, its http
routes are tried in order and the first match wins; conditions inside one match block AND,
blocks OR; a route's destinations are chosen by weight; fault injection and mirroring are
decided here too, so the proxy only executes a `Decision`. No I/O, no clock: randomness comes
from the `random.Random` passed in, which makes every decision reproducible in tests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

CLUSTER_SUFFIX = "svc.cluster.local"

MatchKind = Literal["exact", "prefix", "regex", "present"]


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio StringMatch; `present` is the `{}` form, which only checks that a header exists."""

    kind: MatchKind
    value: str = ""
    pattern: re.Pattern[str] | None = None

    def matches(self, text: str | None, ignore_case: bool = False) -> bool:
        if text is None:
            return False
        if self.kind == "present":
            return True
        if self.kind == "regex":
            assert self.pattern is not None
            return self.pattern.fullmatch(text) is not None
        value = self.value
        if ignore_case:
            text, value = text.lower(), value.lower()
        return text == value if self.kind == "exact" else text.startswith(value)


@dataclass(frozen=True, slots=True)
class MatchBlock:
    """One HTTPMatchRequest: every condition given must hold."""

    name: str = ""
    uri: StringMatch | None = None
    ignore_uri_case: bool = False
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Header manipulation for one direction: set (replace), add (append), remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class HeaderOps:
    request: HeaderEdit = field(default_factory=HeaderEdit)
    response: HeaderEdit = field(default_factory=HeaderEdit)


@dataclass(frozen=True, slots=True)
class Destination:
    """A service host (FQDN) and optional subset; `weight` is its share of the route."""

    host: str
    subset: str | None = None
    port: int | None = None
    weight: int = 100
    headers: HeaderOps = field(default_factory=HeaderOps)


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class Retries:
    """Retry policy; Istio retries twice on connect failures and 503 when none is given."""

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset(
        {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    )
    status_codes: frozenset[int] = frozenset({503})
    backoff: float = 0.025


@dataclass(frozen=True, slots=True)
class Fault:
    delay: float | None = None
    delay_percentage: float = 100.0
    abort_status: int | None = None
    abort_percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class HttpRoute:
    name: str
    matches: tuple[MatchBlock, ...] = ()
    destinations: tuple[Destination, ...] = ()
    mirrors: tuple[Mirror, ...] = ()
    timeout: float | None = None
    retries: Retries = field(default_factory=Retries)
    fault: Fault | None = None
    headers: HeaderOps = field(default_factory=HeaderOps)

    @property
    def weighted(self) -> bool:
        return len(self.destinations) > 1


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """One VirtualService: `namespace/name`, its hosts (FQDN or wildcard) and http routes."""

    name: str
    namespace: str
    hosts: tuple[str, ...]
    routes: tuple[HttpRoute, ...]


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health: eject an endpoint after consecutive errors (Envoy's defaults)."""

    consecutive_5xx: int | None = 5
    consecutive_gateway: int | None = None
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class Service:
    """A DestinationRule: the service host (FQDN), its subsets' label selectors and policy."""

    host: str
    subsets: Mapping[str, Mapping[str, str]]
    name: str = ""
    namespace: str = "default"
    load_balancer: str = "ROUND_ROBIN"
    outlier: OutlierDetection | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    virtual_hosts: tuple[VirtualHost, ...]
    services: Mapping[str, Service]


@dataclass(frozen=True, slots=True)
class Request:
    """What routing looks at. Header names are lower case; `path` has no query string."""

    method: str
    path: str
    authority: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: no route (404, flag NR), an injected abort, or a destination to proxy to."""

    vhost: VirtualHost | None
    route: HttpRoute | None
    destination: Destination | None = None
    mirrors: tuple[Destination, ...] = ()
    delay: float | None = None
    abort_status: int | None = None


def fqdn(host: str, namespace: str) -> str:
    """Expand a short service name the way Istio does: `svc` -> `svc.<ns>.svc.cluster.local`."""
    if host == "*" or host.startswith("*.") or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_SUFFIX}"


def host_matches(pattern: str, authority: str) -> bool:
    """Does a VirtualService host match a request authority (port stripped, short names ok)?"""
    name = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    name = name.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    if name == pattern:
        return True
    # In-cluster clients may say `svc`, `svc.ns` or `svc.ns.svc` for `svc.ns.svc.cluster.local`.
    return pattern.endswith("." + CLUSTER_SUFFIX) and pattern.startswith(name + ".") and (
        name.count(".") < 3
    )


def select_vhost(table: RouteTable, authority: str) -> VirtualHost | None:
    """The VirtualService for `authority`; a table with a single one serves every authority,
    because the local gateway stands in for the service's own address (localhost:8080)."""
    for vhost in table.virtual_hosts:
        if any(host_matches(h, authority) for h in vhost.hosts):
            return vhost
    return table.virtual_hosts[0] if len(table.virtual_hosts) == 1 else None


def _pairs_match(
    conds: tuple[tuple[str, StringMatch], ...], values: Mapping[str, str]
) -> bool:
    return all(sm.matches(values.get(name)) for name, sm in conds)


def block_matches(block: MatchBlock, req: Request) -> bool:
    if block.uri is not None and not block.uri.matches(
        req.path, ignore_case=block.ignore_uri_case and block.uri.kind != "regex"
    ):
        return False
    if block.method is not None and not block.method.matches(req.method):
        return False
    if block.authority is not None and not block.authority.matches(req.authority):
        return False
    if not _pairs_match(block.headers, req.headers):
        return False
    if any(sm.matches(req.headers.get(name)) for name, sm in block.without_headers):
        return False
    return _pairs_match(block.query_params, req.query)


def route_matches(route: HttpRoute, req: Request) -> bool:
    return not route.matches or any(block_matches(b, req) for b in route.matches)


def pick_weighted(destinations: tuple[Destination, ...], rng: random.Random) -> Destination:
    """Choose by weight; a single destination takes all traffic whatever its weight says."""
    if len(destinations) == 1:
        return destinations[0]
    total = sum(d.weight for d in destinations)
    point = rng.random() * total
    for dest in destinations:
        point -= dest.weight
        if point < 0:
            return dest
    return next(d for d in reversed(destinations) if d.weight > 0)


def _chance(rng: random.Random, percentage: float) -> bool:
    return percentage >= 100.0 or rng.random() * 100.0 < percentage


def decide(table: RouteTable, req: Request, rng: random.Random) -> Decision:
    """Route one request: vhost by authority, first matching http route, weighted pick."""
    vhost = select_vhost(table, req.authority)
    if vhost is None:
        return Decision(None, None)
    route = next((r for r in vhost.routes if route_matches(r, req)), None)
    if route is None:
        return Decision(vhost, None)
    delay = abort = None
    if route.fault is not None:
        fault = route.fault
        if fault.delay is not None and _chance(rng, fault.delay_percentage):
            delay = fault.delay
        if fault.abort_status is not None and _chance(rng, fault.abort_percentage):
            abort = fault.abort_status
    destination = pick_weighted(route.destinations, rng) if route.destinations else None
    mirrors = tuple(m.destination for m in route.mirrors if _chance(rng, m.percentage))
    return Decision(vhost, route, destination, mirrors, delay, abort)


def weights_of(route: HttpRoute) -> dict[str, int]:
    """Subset -> weight of one route (a destination without subset is keyed by its host)."""
    if len(route.destinations) == 1:
        dest = route.destinations[0]
        return {dest.subset or dest.host: 100}
    return {d.subset or d.host: d.weight for d in route.destinations}

