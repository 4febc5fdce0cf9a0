"""The seed's troubleshooting table as checks over a release's objects (rendered or live).

Each check is a function from the objects to findings; a finding names the object, what is
wrong, which symptom it causes, and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vllm_canary.k8s.render import Manifest

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Rollout")
# Istio's protocol selection by port name: `<protocol>` or `<protocol>-<suffix>`.
ISTIO_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo",
                   "mysql", "redis", "udp")
DEFAULT_LOAD_SECONDS = 600


@dataclass(frozen=True)
class Finding:
    """One problem from the troubleshooting table, with its fix."""

    check: str
    ref: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.ref}: {self.problem}. Fix: {self.fix}"


@dataclass(frozen=True)
class Objects:
    """The release's objects, grouped the way the checks read them."""

    manifests: list[Manifest]

    def of(self, *kinds: str) -> list[Manifest]:
        return [m for m in self.manifests if m.kind in kinds]

    def pod_templates(self) -> list[tuple[Manifest, dict[str, Any]]]:
        """(workload, pod template) for every workload kind."""
        found = []
        for m in self.of(*WORKLOAD_KINDS):
            template = (m.obj.get("spec") or {}).get("template") or {}
            found.append((m, template))
        for m in self.of("CronJob"):
            job = ((m.obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
            found.append((m, job.get("template") or {}))
        return found


def _spec(m: Manifest) -> dict[str, Any]:
    return m.obj.get("spec") or {}


def _labels(template: dict[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _namespace(m: Manifest, default: str) -> str:
    return str((m.obj.get("metadata") or {}).get("namespace") or default)


def _short(host: str) -> str:
    return host.split(".")[0]


def check_subset_labels(objs: Objects, namespace: str) -> Iterable[Finding]:
    """DestinationRule subsets must select pods that exist, or Envoy has no endpoints."""
    pod_labels = [_labels(t) for w, t in objs.pod_templates() if w.kind in WORKLOAD_KINDS]
    for dr in objs.of("DestinationRule"):
        for subset in _spec(dr).get("subsets") or []:
            labels = subset.get("labels") or {}
            if not any(_selects(labels, pods) for pods in pod_labels):
                yield Finding(
                    "subset-labels", dr.ref,
                    f"subset {subset.get('name')!r} selects {labels}, which no workload's pods "
                    "carry (the seed's `no healthy upstream`)",
                    "make the subset's labels equal the Deployment's pod labels "
                    "(`version: <name>`), or add the missing version to values.versions")


def check_route_subsets(objs: Objects, namespace: str) -> Iterable[Finding]:
    """Every subset a VirtualService routes to must be defined by a DestinationRule."""
    defined = {(_short(_spec(dr).get("host", "")), s.get("name"))
               for dr in objs.of("DestinationRule") for s in _spec(dr).get("subsets") or []}
    for vs in objs.of("VirtualService"):
        for i, route in enumerate(_spec(vs).get("http") or []):
            dests = [r.get("destination") or {} for r in route.get("route") or []]
            if route.get("mirror"):
                dests.append(route["mirror"])
            for d in dests:
                subset = d.get("subset")
                if subset and (_short(d.get("host", "")), subset) not in defined:
                    yield Finding(
                        "route-subsets", vs.ref,
                        f"http[{i}] routes to subset {subset!r} of {d.get('host')}, which no "
                        "DestinationRule defines (503 `no healthy upstream`)",
                        "add the subset to the DestinationRule or fix the route")


def _scraped(svc: Manifest, monitors: list[Manifest]) -> bool:
    annotations = (svc.obj.get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":
        return True
    labels = (svc.obj.get("metadata") or {}).get("labels") or {}
    port_names = {p.get("name") for p in _spec(svc).get("ports") or []}
    for sm in monitors:
        match = (_spec(sm).get("selector") or {}).get("matchLabels") or {}
        ports = {e.get("port") for e in _spec(sm).get("endpoints") or []}
        if _selects(match, labels) and ports & port_names:
            return True
    return False


def check_backend_refs(objs: Objects, namespace: str) -> Iterable[Finding]:
    """Gateway API routes must point at Services that exist and expose the port."""
    services = {m.name: m for m in objs.of("Service")}
    for route in objs.of("HTTPRoute"):
        for i, rule in enumerate(_spec(route).get("rules") or []):
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind", "Service") != "Service":
                    continue
                svc = services.get(ref.get("name"))
                ports = {p.get("port") for p in _spec(svc).get("ports") or []} if svc else set()
                if svc is None or ref.get("port") not in ports:
                    yield Finding(
                        "backend-refs", route.ref,
                        f"rules[{i}] sends traffic to {ref.get('name')}:{ref.get('port')}, "
                        "which no Service exposes (500s from the gateway)",
                        "render per-version Services (the chart does) or fix the backendRef")


def check_scrape(objs: Objects, namespace: str) -> Iterable[Finding]:
    """Model-server pods need a Service that is annotated for scraping or selected by a
    ServiceMonitor on a named port, or their metrics are missing."""
    services = objs.of("Service")
    monitors = objs.of("ServiceMonitor")
    for workload, template in objs.pod_templates():
        labels = _labels(template)
        if workload.kind not in WORKLOAD_KINDS or labels.get("app") != "vllm":
            continue
        fronting = [s for s in services if _selects(_spec(s).get("selector") or {}, labels)]
        if not any(_scraped(s, monitors) for s in fronting):
            names = ", ".join(s.ref for s in fronting) or "no Service at all"
            yield Finding(
                "scrape", workload.ref,
                f"its pods are fronted by {names}, none annotated `prometheus.io/scrape: "
                "\"true\"` nor selected by a ServiceMonitor on a named port (the seed's "
                "missing metrics in Grafana)",
                "enable monitoring.serviceMonitor (its labels must match your Prometheus's "
                "serviceMonitorSelector) or annotate the Service")


def check_fqdn_hosts(objs: Objects, namespace: str) -> Iterable[Finding]:
    """VirtualService and DestinationRule hosts must be FQDNs, or Istio matches nothing (404)."""
    for m in objs.of("VirtualService", "DestinationRule"):
        spec = _spec(m)
        hosts = spec.get("hosts") or [] if m.kind == "VirtualService" else [spec.get("host", "")]
        for host in hosts:
            if host and host != "*" and "." not in host:
                ns = _namespace(m, namespace)
                yield Finding(
                    "fqdn-hosts", m.ref,
                    f"host {host!r} is a short name (the seed's 404: the Host header "
                    "matches no route)",
                    f"use {host}.{ns}.svc.cluster.local")


def check_weights(objs: Objects, namespace: str) -> Iterable[Finding]:
    """What Istio's validation refuses in a route's weights (validateHTTPRouteDestinations,
    pkg/config/validation/validation.go): a weight that is negative or not a whole number,
    and several destinations whose weights are all 0. Weights are relative (Istio >= 1.15,
    istio/istio#36069), so a sum other than 100 is fine: 1:1 is 50/50."""
    for vs in objs.of("VirtualService"):
        for i, route in enumerate(_spec(vs).get("http") or []):
            dests = route.get("route") or []
            weights = [d.get("weight", 0) for d in dests]
            name = route.get("name", "unnamed")
            bad = [w for w in weights
                   if isinstance(w, bool) or not isinstance(w, int) or w < 0]
            if bad:
                yield Finding(
                    "weights", vs.ref,
                    f"http[{i}] ({name}) weights {weights}: {bad[0]!r} is not a whole number "
                    ">= 0 (Istio rejects the VirtualService)",
                    "set values.versions[].weight to whole numbers >= 0")
            elif len(dests) > 1 and sum(weights) == 0:
                yield Finding(
                    "weights", vs.ref,
                    f"http[{i}] ({name}) weights {weights}: total destination weight = 0 "
                    "(Istio rejects the VirtualService)",
                    "give at least one of values.versions[].weight a value above 0")


def check_port_names(objs: Objects, namespace: str) -> Iterable[Finding]:
    """Service ports need a protocol prefix or appProtocol, or Istio treats HTTP as raw TCP."""
    for svc in objs.of("Service"):
        for port in _spec(svc).get("ports") or []:
            name = str(port.get("name") or "")
            if port.get("appProtocol"):
                continue
            if not any(name == p or name.startswith(p + "-") for p in ISTIO_PROTOCOLS):
                yield Finding(
                    "port-names", svc.ref,
                    f"port {port.get('port')} is named {name!r}: Istio cannot tell it is HTTP, "
                    "so header routing and metrics do not apply",
                    "name it http-<suffix> (e.g. http-openai) or set appProtocol: http")


def check_hpa_targets(objs: Objects, namespace: str) -> Iterable[Finding]:
    """An HPA must point at a workload that exists and requests what it scales on."""
    workloads = {(m.kind, m.name): m for m in objs.of(*WORKLOAD_KINDS)}
    for hpa in objs.of("HorizontalPodAutoscaler"):
        ref = _spec(hpa).get("scaleTargetRef") or {}
        target = workloads.get((ref.get("kind"), ref.get("name")))
        if target is None:
            yield Finding("hpa-targets", hpa.ref,
                          f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} does not exist",
                          "point it at vllm-<version> or disable autoscaling")
            continue
        containers = ((_spec(target).get("template") or {}).get("spec") or {}).get("containers")
        for metric in _spec(hpa).get("metrics") or []:
            resource = (metric.get("resource") or {}).get("name")
            if metric.get("type") != "Resource" or not resource:
                continue
            missing = [c.get("name") for c in containers or []
                       if resource not in ((c.get("resources") or {}).get("requests") or {})]
            if missing:
                yield Finding("hpa-targets", hpa.ref,
                              f"scales on {resource} utilization but containers {missing} of "
                              f"{target.ref} request no {resource} (the HPA shows <unknown>)",
                              f"set resources.requests.{resource}")


def _probe_window(probe: dict[str, Any]) -> int:
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("periodSeconds", 10)) * int(
        probe.get("failureThreshold", 3))


def make_probe_check(load_seconds: int) -> Callable[[Objects, str], Iterable[Finding]]:
    """Model servers must survive `load_seconds` of model loading before liveness counts."""

    def check_probes(objs: Objects, namespace: str) -> Iterable[Finding]:
        for workload, template in objs.pod_templates():
            if workload.kind not in WORKLOAD_KINDS or _labels(template).get("app") != "vllm":
                continue
            for c in (template.get("spec") or {}).get("containers") or []:
                startup, live = c.get("startupProbe"), c.get("livenessProbe")
                if not c.get("readinessProbe"):
                    yield Finding("probes", workload.ref,
                                  f"container {c.get('name')!r} has no readinessProbe: traffic "
                                  "reaches it before the model is loaded",
                                  "add a readinessProbe on GET /health")
                window = _probe_window(startup) if startup else (
                    _probe_window(live) if live else None)
                if window is not None and window < load_seconds:
                    which = "startupProbe" if startup else "livenessProbe"
                    yield Finding("probes", workload.ref,
                                  f"container {c.get('name')!r} {which} gives up after {window}s, "
                                  f"less than the {load_seconds}s a model may take to load "
                                  "(CrashLoopBackOff while loading)",
                                  "raise engine.loadTimeoutSeconds (startupProbe failureThreshold)")

    return check_probes


def run_checks(
    manifests: list[Manifest], *, namespace: str = "default",
    load_seconds: int = DEFAULT_LOAD_SECONDS,
) -> list[Finding]:
    """All checks over one release's objects."""
    objs = Objects(manifests)
    checks = (check_subset_labels, check_route_subsets, check_backend_refs, check_scrape,
              check_fqdn_hosts, check_weights, check_port_names, check_hpa_targets,
              make_probe_check(load_seconds))
    findings: list[Finding] = []
    for check in checks:
        findings.extend(check(objs, namespace))
    return findings
