"""The pure routing core: compiled Istio routing tables and the decision for one request.

Semantics follow Istio's VirtualService: the virtual host is picked by authority, its http
routes are tried in order and the first match wins; conditions inside one match block AND,
blocks OR; a route's destinations are chosen by weight; fault injection and mirroring are
decided here too, so the proxy only executes a `Decision`. No I/O, no clock: randomness comes
from the `random.Random` passed in, which makes every decision reproducible in tests.

What the router sees is what Envoy's router sees (docs/istio-semantics.md has the sources):
the path normalized as Istio's default `pathNormalization: BASE` makes Envoy do
(`normalize_target`), query values raw and undecoded (`parse_query`), and repeated request
headers joined with "," (`match_headers`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CLUSTER_SUFFIX = "svc.cluster.local"

MatchKind = Literal["exact", "prefix", "regex", "present"]


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio StringMatch; `present` is the `{}` form, which only checks that a header exists."""

    kind: MatchKind
    value: str = ""
    pattern: Any = None  # a compiled RE2 pattern (re2._Regexp): Envoy's regex engine

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
    """A service host (FQDN) and optional subset; `weight` is its relative weight in the route
    (Istio >= 1.15: 1:1 is 50/50, 300:100 is 75/25; a lone destination takes all traffic)."""

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
    """Retry policy. Without `retries`, Istio's default: 2 retries on connect-failure,
    refused-stream, unavailable, cancelled and retriable-status-codes with no status codes,
    so a 503 answer is not retried (Istio >= 1.24, EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY)."""

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset(
        {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    )
    status_codes: frozenset[int] = frozenset()
    backoff: float = 0.025


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection; a percentage Istio was not given is 0 (nothing injected)."""

    delay: float | None = None
    delay_percentage: float = 0.0
    abort_status: int | None = None
    abort_percentage: float = 0.0


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
    """Choose by relative weight, as Envoy's weighted_clusters do (the loader refuses a total
    of 0); a single destination takes all traffic whatever its weight says."""
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
    if percentage <= 0.0:
        return False
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


def percentages(weights: Mapping[str, int | float]) -> dict[str, int | float]:
    """Relative weights -> percent of traffic, e.g. {v1: 1, v2: 1} -> {v1: 50, v2: 50} and
    {v1: 300, v2: 100} -> {v1: 75, v2: 25}; whole numbers stay ints, others are rounded to
    0.01. One entry is 100 whatever its weight; all zero (refused by Istio) gives zeros."""
    if len(weights) == 1:
        return {name: 100 for name in weights}
    total = sum(weights.values())
    out: dict[str, int | float] = {}
    for name, w in weights.items():
        pct = w * 100 / total if total > 0 else 0.0
        out[name] = int(pct) if float(pct).is_integer() else round(pct, 2)
    return out


def configured_weights(route: HttpRoute) -> dict[str, int]:
    """Subset -> the weight as written in the route (a destination without subset is keyed by
    its host)."""
    return {d.subset or d.host: d.weight for d in route.destinations}


def weights_of(route: HttpRoute) -> dict[str, int | float]:
    """Subset -> percent of the route's traffic it gets (weights are relative)."""
    return percentages(configured_weights(route))


def match_headers(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Request headers as Envoy's route matcher sees them: names lower case, the values of a
    header sent more than once joined with "," in arrival order (Envoy HeaderUtility::
    getAllOfHeaderAsString, runtime `http_match_on_all_headers`, on by default)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def parse_query(query_string: str) -> dict[str, str]:
    """Query parameters as Envoy's QueryParameterMatcher sees them: split on & and the first
    =, values NOT percent-decoded (`+` stays `+`), the first of a repeated name wins
    (Envoy Http::Utility::QueryParamsMulti::parseQueryString and getFirstValue)."""
    out: dict[str, str] = {}
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        out.setdefault(name, value)
    return out


_HEX = frozenset("0123456789abcdefABCDEF")
# Bytes Envoy's path canonicalizer decodes from %XX (RFC 3986 unreserved, dot aside),
# percent-encodes when raw, or refuses (chromium_url kPathCharLookup, Envoy source/common/
# chromium_url/url_canon_path.cc).
_UNESCAPE = frozenset(b"-_~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ESCAPE = frozenset([*range(0x01, 0x21), 0x22, 0x23, 0x3C, 0x3E, 0x3F, 0x5E, 0x60, 0x7B, 0x7C,
                     0x7D, *range(0x7F, 0x100)])


# Paths made only of characters the canonicalizer copies as they are (no `%`, `.`, `\\`).
_PLAIN = re.compile(r"/[-A-Za-z0-9_~!$&'()*+,;=:@/]*")


def _dot_len(path: str, i: int) -> int:
    """Length of a dot at `i` (`.` or `%2e`, either case), else 0 (chromium IsDot)."""
    if path[i] == ".":
        return 1
    if path[i] == "%" and path[i + 1:i + 3].lower() == "2e":
        return 3
    return 0


def normalize_path(path: str) -> str | None:
    """Envoy's `normalize_path` (what Istio's default `pathNormalization: BASE` turns on):
    RFC 3986 dot segments removed (also `%2e`), `\\` made `/`, percent-encoded unreserved
    characters decoded (`%41` -> `A`), other escapes kept exactly (hex case too), characters
    that must be escaped percent-encoded, slashes NOT merged and `%2F` NOT decoded. None when
    Envoy answers 400 instead (a NUL byte, raw or as `%00`). `path` has no query; text is
    bytes as latin-1. Source: Envoy source/common/chromium_url/url_canon_path.cc."""
    if _PLAIN.fullmatch(path):  # nothing to change: the common case, without the loop
        return path
    if not path.startswith(("/", "\\")):
        path = "/" + path
    out: list[str] = []  # one character per item, so indexes are output positions
    end = len(path)
    i = 0
    bad_percent = -10  # output index of a `%` that did not start a valid escape
    ok = True
    while i < end:
        ch = path[i]
        dot = _dot_len(path, i)
        if dot:
            if out and out[-1] == "/":
                after = i + dot
                if after == end or path[after] in "/\\":  # a `.` segment: dropped
                    i = after + (1 if after < end else 0)
                    continue
                dot2 = _dot_len(path, after)
                if dot2 and (after + dot2 == end or path[after + dot2] in "/\\"):
                    j = len(out) - 1  # a `..` segment: back up to the previous slash
                    if j > 0:
                        j -= 1
                        while out[j] != "/" and j > 0:
                            j -= 1
                    del out[j + 1:]
                    i = after + dot2 + (1 if after + dot2 < end else 0)
                    continue
            out.append(".")
            i += dot
            continue
        if ch == "\\":
            out.append("/")
        elif ch == "%":
            hexes = path[i + 1:i + 3]
            if len(hexes) == 2 and hexes[0] in _HEX and hexes[1] in _HEX:
                value = int(hexes, 16)
                if value in _UNESCAPE:
                    out.append(chr(value))
                    if bad_percent >= len(out) - 3:
                        _nested_escape(path, i + 3, bad_percent, out)
                else:
                    out.extend(("%", hexes[0], hexes[1]))
                    ok = ok and value != 0
                i += 3
                continue
            bad_percent = len(out)
            out.append("%")
        elif ch == "\x00":
            out.extend("%00")
            ok = False
        elif ord(ch) in _ESCAPE or ord(ch) > 0xFF:
            out.extend(f"%{ord(ch):02X}" if ord(ch) < 0x100 else
                       "".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
        i += 1
    return "".join(out) if ok else None


def _nested_escape(path: str, nxt: int, bad: int, out: list[str]) -> None:
    """chromium CheckForNestedEscapes: `%%30%30` must not turn into the escape `%00`; the
    first `%` becomes `%25` when what follows it now reads as a valid escape."""
    tail = out[bad:]  # "%" and one or two characters
    if len(tail) == 2:
        if nxt >= len(path) or ord(path[nxt]) >= 0x80:
            return
        tail = [*tail, path[nxt]]
    if tail[1] in _HEX and tail[2] in _HEX:
        out[bad:] = ["%", "2", "5", *out[bad + 1:]]


def routing_request(method: str, target: str, authority: str,
                    headers: list[tuple[str, str]], lower: Mapping[str, str]
                    ) -> tuple[Request, str] | None:
    """The Request Envoy's router would match for an HTTP/1 request, and the target to send
    upstream (its path normalized, as Envoy forwards it); None when Envoy answers 400.
    `lower` is the last-wins dict of `headers`, reused when no name repeats."""
    norm = normalize_target(target)
    if norm is None:
        return None
    path, _, query = norm.partition("?")
    joined = lower if len(lower) == len(headers) else match_headers(headers)
    return Request(method, path, authority, joined, parse_query(query) if query else {}), norm


def normalize_target(target: str) -> str | None:
    """A request target (path and query) with its path normalized as Envoy does; the query is
    kept as sent. None when Envoy would answer 400."""
    path, sep, query = target.partition("?")
    norm = normalize_path(path)
    return None if norm is None else norm + sep + query

