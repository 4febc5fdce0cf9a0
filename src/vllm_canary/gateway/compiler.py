"""Compile checked Istio objects into the routing core's immutable RouteTable."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from vllm_canary.gateway import istio_fields as F
from vllm_canary.gateway.istio import Checker, IstioObjects, RoutesError, domain_problem, is_ip
from vllm_canary.gateway.routing import (
    Destination,
    Fault,
    HeaderEdit,
    HeaderOps,
    HttpRoute,
    MatchBlock,
    Mirror,
    OutlierDetection,
    Retries,
    RouteTable,
    Service,
    VirtualHost,
    fqdn,
)

_SUBSET = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")  # a DNS-1123 label


def compile_table(objs: IstioObjects) -> RouteTable:
    """Check every field and build the table; raises RoutesError naming object and field."""
    services: dict[str, Service] = {}
    for doc in objs.destinationrules:
        svc = _service(doc)
        if svc.host in services:
            raise RoutesError(f"two DestinationRules for host {svc.host}; keep one")
        services[svc.host] = svc
    vhosts = tuple(_virtual_host(doc, services) for doc in objs.virtualservices)
    return RouteTable(vhosts, services)


def _service(doc: dict[str, Any]) -> Service:
    o = Checker(doc)
    spec = o.fields(doc.get("spec"), "spec", F.DR_SPEC, F.DR_SPEC_ISTIO)
    host = fqdn(o.string(spec.get("host"), "spec.host"), o.namespace)
    subsets: dict[str, dict[str, str]] = {}
    for i, raw in enumerate(o.items(spec.get("subsets"), "spec.subsets")):
        path = f"spec.subsets[{i}]"
        sub = o.fields(raw, path, F.SUBSET, F.SUBSET_ISTIO)
        name = o.string(sub.get("name"), f"{path}.name")
        if len(name) > 63 or not _SUBSET.fullmatch(name):  # Istio's validateSubsetName
            o.fail(f"{path}.name", f"subset name is invalid: {name!r} (Istio's validation)")
        labels = sub.get("labels") or {}
        if not isinstance(labels, dict):
            o.fail(f"{path}.labels", "must be a mapping of label: value")
        if name in subsets:
            o.fail(f"{path}.name", f"subset {name!r} is defined twice")
        subsets[name] = {str(k): str(v) for k, v in labels.items()}
    lb, outlier = "ROUND_ROBIN", None
    if spec.get("trafficPolicy") is not None:
        tp = o.fields(spec["trafficPolicy"], "spec.trafficPolicy", F.TRAFFIC_POLICY,
                      F.TRAFFIC_POLICY_ISTIO)
        if tp.get("loadBalancer") is not None:
            lbs = o.fields(tp["loadBalancer"], "spec.trafficPolicy.loadBalancer",
                           F.LOAD_BALANCER, F.LOAD_BALANCER_ISTIO)
            where = "spec.trafficPolicy.loadBalancer.simple"
            lb = o.string(lbs.get("simple", "ROUND_ROBIN"), where)
            if lb not in F.LB_SIMPLE:
                o.fail(where, f"must be one of {', '.join(sorted(F.LB_SIMPLE))}")
            lb = "ROUND_ROBIN" if lb == "UNSPECIFIED" else lb
        if tp.get("outlierDetection") is not None:
            outlier = _outlier(o, tp["outlierDetection"], "spec.trafficPolicy.outlierDetection")
    return Service(host, subsets, o.name, o.namespace, lb, outlier)


def _outlier(o: Checker, node: Any, path: str) -> OutlierDetection:
    od = o.fields(node, path, F.OUTLIER, F.OUTLIER_ISTIO)
    base = OutlierDetection()

    def count(key: str, default: int | None) -> int | None:
        return default if key not in od else int(o.number(od[key], f"{path}.{key}", 0, 1e9))

    return OutlierDetection(
        consecutive_5xx=count("consecutive5xxErrors", base.consecutive_5xx),
        consecutive_gateway=count("consecutiveGatewayErrors", None),
        interval=o.duration(od["interval"], f"{path}.interval") if "interval" in od
        else base.interval,
        base_ejection=o.duration(od["baseEjectionTime"], f"{path}.baseEjectionTime")
        if "baseEjectionTime" in od else base.base_ejection,
        max_ejection_percent=o.number(od.get("maxEjectionPercent", base.max_ejection_percent),
                                      f"{path}.maxEjectionPercent", 0, 100),
    )


def _virtual_host(doc: dict[str, Any], services: dict[str, Service]) -> VirtualHost:
    o = Checker(doc)
    spec = o.fields(doc.get("spec"), "spec", F.VS_SPEC, F.VS_SPEC_ISTIO)
    hosts = [o.string(h, f"spec.hosts[{i}]") for i, h in enumerate(o.items(spec.get("hosts"),
                                                                          "spec.hosts"))]
    if not hosts:
        o.fail("spec.hosts", "needs at least one host")
    gateways = [o.string(g, f"spec.gateways[{i}]")  # the local gateway is mesh and ingress
                for i, g in enumerate(o.items(spec.get("gateways"), "spec.gateways"))]
    mesh = not gateways or "mesh" in gateways
    for i, h in enumerate(hosts):  # Istio's ValidateVirtualService
        problem = domain_problem(h)
        if problem is not None and not is_ip(h):
            o.fail(f"spec.hosts[{i}]", f"{problem} (Istio's validation)")
        if h == "*" and mesh:
            o.fail(f"spec.hosts[{i}]", "wildcard host * is not allowed for virtual services "
                   "bound to the mesh gateway (Istio's validation)")
    for i, e in enumerate(o.items(spec.get("exportTo"), "spec.exportTo")):
        o.string(e, f"spec.exportTo[{i}]")  # one namespace locally: visibility always holds
    raw_routes = o.items(spec.get("http"), "spec.http")
    if not raw_routes:
        o.fail("spec.http", "needs at least one http route")
    routes = tuple(_route(o, r, f"spec.http[{i}]", i, services) for i, r in enumerate(raw_routes))
    return VirtualHost(o.name, o.namespace, tuple(fqdn(h.lower(), o.namespace) for h in hosts),
                       routes)


def _route(o: Checker, raw: Any, path: str, index: int, services: dict[str, Service]) -> HttpRoute:
    r = o.fields(raw, path, F.HTTP_ROUTE, F.HTTP_ROUTE_ISTIO)
    name = o.string(r["name"], f"{path}.name") if "name" in r else f"http[{index}]"
    matches = tuple(_match(o, m, f"{path}.match[{j}]")
                    for j, m in enumerate(o.items(r.get("match"), f"{path}.match")))
    dests = o.items(r.get("route"), f"{path}.route")
    if not dests:
        o.fail(f"{path}.route", "needs at least one destination")
    destinations = _weighted(o, dests, f"{path}.route", services)
    return HttpRoute(
        name=name,
        matches=matches,
        destinations=destinations,
        mirrors=_mirrors(o, r, path, services),
        timeout=o.duration(r["timeout"], f"{path}.timeout") if "timeout" in r else None,
        retries=_retries(o, r["retries"], f"{path}.retries") if "retries" in r else Retries(),
        fault=_fault(o, r["fault"], f"{path}.fault") if "fault" in r else None,
        headers=_header_ops(o, r.get("headers"), f"{path}.headers"),
    )


def _match(o: Checker, raw: Any, path: str) -> MatchBlock:
    m = o.fields(raw, path, F.MATCH, F.MATCH_ISTIO)
    one = {k: o.string_match(m[k], f"{path}.{k}", k)
           for k in ("uri", "method", "authority") if k in m}
    ignore_case = m.get("ignoreUriCase", False)
    if not isinstance(ignore_case, bool):
        o.fail(f"{path}.ignoreUriCase", "must be true or false")
    return MatchBlock(
        name=str(m.get("name", "")),
        uri=one.get("uri"),
        ignore_uri_case=ignore_case,
        method=one.get("method"),
        authority=one.get("authority"),
        headers=o.string_map(m["headers"], f"{path}.headers", "headers")
        if "headers" in m else (),
        without_headers=o.string_map(m["withoutHeaders"], f"{path}.withoutHeaders",
                                     "withoutHeaders") if "withoutHeaders" in m else (),
        query_params=o.string_map(m["queryParams"], f"{path}.queryParams", "queryParams")
        if "queryParams" in m else (),
    )


def _destination(o: Checker, raw: Any, path: str, services: dict[str, Service],
                 weight: int = 100, headers: HeaderOps | None = None) -> Destination:
    d = o.fields(raw, path, F.DESTINATION)
    given = o.string(d.get("host"), f"{path}.host")
    problem = "invalid destination host *" if given == "*" else domain_problem(given)
    if problem is not None:  # Istio's validateDestination
        o.fail(f"{path}.host", f"{problem} (Istio's validation)")
    host = fqdn(given.lower(), o.namespace)
    subset = o.string(d["subset"], f"{path}.subset") if "subset" in d else None
    if subset is not None and (len(subset) > 63 or not _SUBSET.fullmatch(subset)):
        o.fail(f"{path}.subset", f"subset name is invalid: {subset} (Istio's validation)")
    if subset is not None:
        svc = services.get(host)
        if svc is None:
            o.fail(f"{path}.subset", f"no DestinationRule for host {host} defines subsets")
        if subset not in svc.subsets:
            o.fail(f"{path}.subset", f"subset {subset!r} is not in DestinationRule "
                   f"{svc.namespace}/{svc.name} (has {', '.join(svc.subsets) or 'none'})")
    port = None
    if "port" in d:
        p = o.fields(d["port"], f"{path}.port", F.PORT)
        port = int(o.number(p.get("number"), f"{path}.port.number", 1, 65535))
    return Destination(host, subset, port, weight, headers or HeaderOps())


def _weighted(o: Checker, dests: list[Any], path: str,
              services: dict[str, Service]) -> tuple[Destination, ...]:
    """Destinations with relative weights (Istio >= 1.15, istio/istio#36069): any whole
    numbers >= 0, shares = weight / total. As Istio's validateHTTPRouteDestinations: a negative
    weight is refused, and so is a total of 0 over several destinations; a lone destination
    takes all traffic whatever its weight (Istio does not make it a weighted cluster)."""
    out = []
    for i, raw in enumerate(dests):
        rd = o.fields(raw, f"{path}[{i}]", F.ROUTE_DEST)
        weight = o.integer(rd.get("weight", 0), f"{path}[{i}].weight")
        if weight < 0:
            o.fail(f"{path}[{i}].weight", f"weight {weight} < 0 (Istio's validation)")
        headers = _header_ops(o, rd.get("headers"), f"{path}[{i}].headers")
        out.append(_destination(o, rd.get("destination"), f"{path}[{i}].destination", services,
                                weight, headers))
    if len(out) > 1 and sum(d.weight for d in out) == 0:
        o.fail(path, "total destination weight = 0 (Istio's validation; give at least one "
               "destination a weight above 0)")
    return tuple(out)


def _mirrors(o: Checker, r: dict[str, Any], path: str,
             services: dict[str, Service]) -> tuple[Mirror, ...]:
    """`mirror` with `mirrorPercentage` (or the deprecated integer `mirrorPercent`), or
    `mirrors`: no percentage mirrors 100%, an explicit 0 mirrors nothing (Istio route.go
    MirrorPercent)."""
    if "mirror" in r and "mirrors" in r:
        o.fail(f"{path}.mirrors", "HTTP route cannot contain both mirror and mirrors "
               "(Istio's validation)")
    if "mirror" in r:
        pct = 100.0
        for key in ("mirrorPercent", "mirror_percent"):
            if key in r:
                pct = float(o.integer(r[key], f"{path}.{key}", 0, 100))
        if "mirrorPercentage" in r:  # Istio reads mirrorPercentage first
            pct = o.percentage(r["mirrorPercentage"], f"{path}.mirrorPercentage")
        return (Mirror(_destination(o, r["mirror"], f"{path}.mirror", services), pct),)
    mirrors = []
    for i, raw in enumerate(o.items(r.get("mirrors"), f"{path}.mirrors")):
        m = o.fields(raw, f"{path}.mirrors[{i}]", F.MIRRORS_ITEM)
        if m.get("destination") is None:
            o.fail(f"{path}.mirrors[{i}].destination", "destination is required for mirrors "
                   "(Istio's validation)")
        pct = o.percentage(m["percentage"], f"{path}.mirrors[{i}].percentage") \
            if "percentage" in m else 100.0
        dest = _destination(o, m.get("destination"), f"{path}.mirrors[{i}].destination", services)
        mirrors.append(Mirror(dest, pct))
    return tuple(mirrors)


def _retries(o: Checker, raw: Any, path: str) -> Retries:
    """Istio's ValidateHTTPRetry and retry.ConvertPolicy: `attempts` absent is 0, and 0
    disables retries (then perTryTimeout or retryOn is refused); retryOn is split on "," as
    written (a space makes a part invalid) into Envoy conditions and known HTTP status codes;
    a policy without retryOn keeps Istio's default conditions (no status codes)."""
    r = o.fields(raw, path, F.RETRIES, F.RETRIES_ISTIO)
    default = Retries()
    attempts = o.integer(r.get("attempts", 0), f"{path}.attempts")
    if attempts < 0:
        o.fail(f"{path}.attempts", "attempts cannot be negative (Istio's validation)")
    if attempts == 0 and ("perTryTimeout" in r or r.get("retryOn")):
        o.fail(f"{path}.attempts", "http retry policy configured when attempts are set to 0 "
               "(disabled) (Istio's validation)")
    retry_on, codes = default.retry_on, default.status_codes
    if r.get("retryOn"):
        retry_on, found = set(), set()
        for part in o.string(r["retryOn"], f"{path}.retryOn").split(","):
            code = _atoi(part)
            if code is not None and _status_text(code):
                found.add(code)
                retry_on.add("retriable-status-codes")
            elif part in F.RETRY_ON_NOT_EXECUTED:
                o.fail(f"{path}.retryOn", f"retry condition {part!r} is valid in Istio but the "
                       "local gateway does not execute it; remove it")
            elif part in F.RETRY_ON:
                retry_on.add(part)
            else:
                o.fail(f"{path}.retryOn", f"{part!r} is not a valid retryOn policy "
                       "(Istio's validation)")
        retry_on, codes = frozenset(retry_on), frozenset(found)
    return Retries(
        attempts=attempts,
        per_try_timeout=o.duration(r["perTryTimeout"], f"{path}.perTryTimeout")
        if "perTryTimeout" in r else None,
        retry_on=retry_on,
        status_codes=codes,
        backoff=o.duration(r["backoff"], f"{path}.backoff") if "backoff" in r else default.backoff,
    )


def _atoi(text: str) -> int | None:
    """Go's strconv.Atoi: an optional sign and decimal digits, else None."""
    body = text[1:] if text[:1] in ("+", "-") else text
    return int(text) if body.isascii() and body.isdigit() else None


def _status_text(code: int) -> bool:
    """Does Go's net/http StatusText know `code` (Istio's test for a status code in retryOn)?
    Python's HTTPStatus holds the same registered codes (100-103, 200-208, 226, 300-305,
    307, 308, 400-418, 421-426, 428, 429, 431, 451, 500-508, 510, 511)."""
    try:
        HTTPStatus(code)
    except ValueError:
        return False
    return True


def _fault(o: Checker, raw: Any, path: str) -> Fault:
    """Istio's validateHTTPFaultInjection and route.go TranslateFault: at least one of abort
    and delay; a percentage absent injects nothing (istio/istio#36303, #39969); a delay with
    only the deprecated integer `percent` uses it; an abort without httpStatus, or a delay
    without fixedDelay, injects nothing; Envoy refuses httpStatus outside [200, 600)."""
    f = o.fields(raw, path, F.FAULT)
    if f.get("delay") is None and f.get("abort") is None:
        o.fail(path, "HTTP fault injection must have an abort and/or a delay "
               "(Istio's validation)")
    delay = abort = None
    delay_pct = abort_pct = 0.0
    if f.get("delay") is not None:
        d = o.fields(f["delay"], f"{path}.delay", F.DELAY, F.DELAY_ISTIO)
        if "fixedDelay" in d:
            delay = o.duration(d["fixedDelay"], f"{path}.delay.fixedDelay")
        if "percentage" in d:
            delay_pct = o.percentage(d["percentage"], f"{path}.delay.percentage", fault=True)
        elif "percent" in d:  # int32 cast to uint32, out of 100 (Envoy caps at 100%)
            percent = o.integer(d["percent"], f"{path}.delay.percent")
            delay_pct = 100.0 if percent < 0 else float(min(percent, 100))
    if f.get("abort") is not None:
        a = o.fields(f["abort"], f"{path}.abort", F.ABORT, F.ABORT_ISTIO)
        if "httpStatus" in a:
            abort = o.integer(a["httpStatus"], f"{path}.abort.httpStatus")
            if not 200 <= abort <= 599:
                o.fail(f"{path}.abort.httpStatus", f"HTTP status {abort} is not in range "
                       "200-599 (Istio's validation; Envoy refuses 600 too)")
        if "percentage" in a:
            abort_pct = o.percentage(a["percentage"], f"{path}.abort.percentage", fault=True)
    return Fault(delay, delay_pct, abort, abort_pct)


def _header_ops(o: Checker, raw: Any, path: str) -> HeaderOps:
    if raw is None:
        return HeaderOps()
    h = o.fields(raw, path, F.HEADERS)
    return HeaderOps(_edit(o, h.get("request"), f"{path}.request"),
                     _edit(o, h.get("response"), f"{path}.response"))


def _edit(o: Checker, raw: Any, path: str) -> HeaderEdit:
    if raw is None:
        return HeaderEdit()
    e = o.fields(raw, path, F.HEADER_EDIT)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        node = e.get(key) or {}
        if not isinstance(node, dict):
            o.fail(f"{path}.{key}", "must be a mapping of header: value")
        return tuple((str(k).lower(), str(v)) for k, v in node.items())

    remove = tuple(o.string(x, f"{path}.remove[{i}]").lower()
                   for i, x in enumerate(o.items(e.get("remove"), f"{path}.remove")))
    edit = HeaderEdit(pairs("set"), pairs("add"), remove)
    request = path.endswith(".request")
    for key, names in (("set", [n for n, _ in edit.set]), ("add", [n for n, _ in edit.add]),
                       ("remove", list(edit.remove))):
        for name in names:
            _check_header_op(o, f"{path}.{key}", name, request and key != "remove")
    for name, value in (*edit.set, *edit.add):
        if _BAD_VALUE.search(value):
            o.fail(f"{path}.{name}", f"header value configuration {value!r} is invalid "
                   "(Istio's validation: no control characters)")
    return edit


_BAD_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def _check_header_op(o: Checker, path: str, name: str, request_set: bool) -> None:
    """Istio's ValidateHTTPHeaderWithAuthorityOperationName (request set/add: no `:` pseudo
    header but :authority/host) and ValidateHTTPHeaderOperationName (remove, and responses:
    neither host nor a pseudo header)."""
    if not name:
        o.fail(path, "header name cannot be empty (Istio's validation)")
    authority = name in (":authority", "host")
    if request_set and name.startswith(":") and not authority:
        o.fail(f"{path}.{name}", f'invalid header "{name}": header cannot have ":" prefix '
               "(Istio's validation)")
    if not request_set and name == "host":
        o.fail(f"{path}.{name}", 'invalid header "host": cannot set Host header '
               "(Istio's validation)")
    if not request_set and name.startswith(":"):
        o.fail(f"{path}.{name}", f'invalid header "{name}": header cannot have ":" prefix '
               "(Istio's validation)")
