"""The console's web server (aiohttp): the page and its assets, and a JSON API the page polls.

    GET  /                          the page (static/index.html)
    GET  /api/config                dashboard (re-read from its file), colours, refresh, versions
    GET  /api/panels/{id}           one panel's series: ?from=now-1h&to=now&version=v1&version=v2
    GET  /api/topology              client -> gateway -> versions (+ mirror edges), live figures
    GET  /api/routes                the routes in force (admin API)
    PUT  /api/weights               {"weights": {"v1": 70, "v2": 30}, "route": optional}
    GET  /api/rollout               phase, step, weights, evidence, and their history
    POST /api/rollout/promote|abort
    GET  /api/quality               every evaluate decision.json, latest last
    GET  /reports/{day}/report.html the data loop's HTML report

Security: the admin token never leaves this process. Every request must name a Host this
server listens as (DNS rebinding). A mutation (PUT/POST) must carry `X-Console-Request: 1` and
a JSON body, and is refused when the browser says it is cross-site (`Sec-Fetch-Site` other than
same-origin/none, or an `Origin` that is not this server): a custom header cannot be sent
cross-origin without a CORS preflight, which this server never grants (OWASP CSRF cheat
sheet, "Employing custom request headers for AJAX/API" and "Verifying origin with standard
headers").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from vllm_canary import procs
from vllm_canary.analysis.sequential import RateRatioTest
from vllm_canary.console import dashboard as dash
from vllm_canary.console.sources import (
    Admin,
    Prometheus,
    SourceError,
    instant_by,
    mirrors_of,
    quality_reports,
)
from vllm_canary.rollout.state import RolloutState, StateStore

log = logging.getLogger("vllm_canary.console")
STATIC = Path(__file__).parent / "static"
MUTATION_HEADER = "X-Console-Request"
# One colour per version everywhere (Grafana's classic palette: blue, orange, green, ...).
PALETTE = ("#3274d9", "#ff9830", "#56a64b", "#b877d9", "#f2cc0c", "#e02f44", "#8ab8ff")
HISTORY = 1800  # samples of weights/evidence kept (1 h at the default 2 s)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ConsoleConfig:
    """Where the console reads from; `admin_token` is only ever sent to the admin API."""

    prometheus_url: str | None
    admin_url: str | None
    admin_token: str | None = None
    dashboard_path: Path = field(default_factory=dash.default_dashboard_path)
    reports_dir: Path = Path("reports")
    rollout_state: Path | None = None
    scrape_interval: float = 15.0  # seconds: Grafana's $__rate_interval needs it
    refresh: float = 5.0  # seconds between page refreshes
    sample_interval: float = 2.0  # seconds between samples of weights and evidence
    stable: str = "v1"
    canary: str = "v2"
    host: str = "127.0.0.1"
    port: int = 3000
    extra_hosts: tuple[str, ...] = ()  # more Host header values to accept (e.g. a tunnel's)


def error(status: int, message: str, kind: str = "invalid_request_error",
          param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def colours(versions: list[str], stable: str = "v1", canary: str = "v2") -> dict[str, str]:
    """Stable colour per version: the stable and canary first, the rest by name."""
    order = [stable, canary, *sorted(v for v in set(versions) if v not in (stable, canary))]
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(order)}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Console:
    def __init__(self, cfg: ConsoleConfig) -> None:
        self.cfg = cfg
        self.session: aiohttp.ClientSession | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._dash_cache: tuple[float, dash.Dashboard] | None = None
        self.rollout_store = StateStore(cfg.rollout_state) if cfg.rollout_state else None

    # ---- backends ----------------------------------------------------------------------
    @property
    def prom(self) -> Prometheus | None:
        if not self.cfg.prometheus_url or self.session is None:
            return None
        return Prometheus(self.cfg.prometheus_url, self.session)

    @property
    def admin(self) -> Admin:
        assert self.session is not None
        return Admin(self.cfg.admin_url, self.cfg.admin_token, self.session)

    def dashboard(self) -> dash.Dashboard:
        """The dashboard file, re-read whenever it changes (it is never copied)."""
        path = self.cfg.dashboard_path
        mtime = path.stat().st_mtime
        if self._dash_cache is None or self._dash_cache[0] != mtime:
            self._dash_cache = (mtime, dash.load(path))
        return self._dash_cache[1]

    def rollout(self) -> RolloutState | None:
        return self.rollout_store.load() if self.rollout_store else None

    # ---- the app -----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/panels/{id}", self.panel)
        app.router.add_get("/api/topology", self.topology)
        app.router.add_get("/api/routes", self.routes)
        app.router.add_put("/api/weights", self.put_weights)
        app.router.add_get("/api/rollout", self.get_rollout)
        app.router.add_post("/api/rollout/{action}", self.rollout_action)
        app.router.add_get("/api/quality", self.quality)
        app.router.add_get("/reports/{name}/report.html", self.report_html)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/favicon.ico", self.favicon)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession()
        sampler = asyncio.create_task(self._sample_forever())
        yield
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await self.session.close()

    def _allowed_hosts(self) -> set[str]:
        port = self.cfg.port
        names = {self.cfg.host, "127.0.0.1", "localhost", "[::1]"}
        if self.cfg.host in ("0.0.0.0", "::"):  # listening everywhere: any name
            return set()
        allowed = {f"{n}:{port}" for n in names} | (names if port == 80 else set())
        return allowed | set(self.cfg.extra_hosts)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = self._allowed_hosts()
        if allowed and request.host not in allowed:
            return error(421, f"Host {request.host!r} is not this console's (DNS rebinding "
                         "guard); open it by the address it listens on, or start it with "
                         f"--allow-host {request.host}", code="wrong_host")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refused = _cross_site(request)
            if refused:
                return error(403, refused, "permission_error", code="cross_site_refused")
        elif request.method == "OPTIONS":  # no CORS preflight is ever granted
            return error(403, "cross-origin requests are not allowed", "permission_error",
                         code="cross_site_refused")
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = error(exc.status, exc.reason, code=exc.reason.lower().replace(" ", "_"))
        except Exception as exc:  # a bug of ours: a JSON 500 the page can show, and a log line
            log.exception("console: %s %s failed", request.method, request.path)
            resp = error(500, f"console error: {type(exc).__name__}: {exc}", "api_error",
                         code="internal_error")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; script-src 'self'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # ---- handlers ----------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)  # none: keeps the browser's console free of 404s

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def config(self, request: web.Request) -> web.Response:
        try:
            d = self.dashboard()
        except Exception as exc:
            return error(500, f"dashboard: {exc}", "api_error", code="dashboard_unreadable")
        versions, warning = [], ""
        prom = self.prom
        if prom is None:
            warning = "no Prometheus configured: panels have no data (pass --prometheus URL)"
        else:
            try:
                match, label = dash.parse_label_values(d.version_query)
                versions = await prom.label_values(label, match)
            except (ValueError, SourceError) as exc:
                warning = str(exc)
        versions = sorted(set(versions) | {self.cfg.stable, self.cfg.canary})
        return web.json_response({
            "dashboard": d.to_dict(), "versions": versions,
            "colours": colours(versions, self.cfg.stable, self.cfg.canary),
            "refresh_s": self.cfg.refresh, "scrape_interval_s": self.cfg.scrape_interval,
            "prometheus_url": self.cfg.prometheus_url, "admin_url": self.cfg.admin_url,
            "stable": self.cfg.stable, "canary": self.cfg.canary, "warning": warning,
            "dashboard_file": str(self.cfg.dashboard_path),
        })

    async def panel(self, request: web.Request) -> web.Response:
        try:
            panel_id = int(request.match_info["id"])
        except ValueError:
            return error(400, "panel id must be a number", param="id", code="invalid_panel")
        d = self.dashboard()
        panel = d.panel(panel_id)
        if panel is None:
            return error(404, f"no timeseries panel with id {panel_id} in {d.title}",
                         param="id", code="unknown_panel")
        now = time.time()
        try:
            start = dash.parse_time(request.query.get("from", d.time_from), now)
            end = dash.parse_time(request.query.get("to", d.time_to), now)
        except ValueError as exc:
            return error(400, str(exc), param="from", code="invalid_time")
        if not start < end:
            return error(400, "`from` must be before `to`", param="from", code="invalid_time")
        step = dash.step_for(end - start, self.cfg.scrape_interval)
        start = math.floor(start / step) * step  # align to the step grid, as Grafana does
        version = dash.version_regex(request.query.getall("version", []), d.all_value)
        body: dict[str, Any] = {"id": panel.id, "title": panel.title, "unit": panel.unit,
                                "step": step, "start": start, "end": end, "queries": []}
        prom = self.prom
        if prom is None:
            body.update(x=[], series=[], error="no Prometheus configured")
            return web.json_response(body)
        answers = []
        errors = []
        exprs = [dash.substitute(t.expr, version, step, end - start, self.cfg.scrape_interval)
                 for t in panel.targets]
        results = await asyncio.gather(*(prom.query_range(e, start, end, step) for e in exprs),
                                       return_exceptions=True)
        for target, expr, res in zip(panel.targets, exprs, results, strict=True):
            body["queries"].append({"refId": target.ref_id, "expr": expr})
            if isinstance(res, SourceError):
                errors.append(f"{target.ref_id}: {res}")
            elif isinstance(res, BaseException):
                raise res
            else:
                answers.append((target, res))
        body.update(dash.align(answers, start, end, step))
        body["error"] = "; ".join(errors)
        return web.json_response(body)

    async def routes(self, request: web.Request) -> web.Response:
        try:
            view = await self.admin.routes()
        except SourceError as exc:
            return error(502, str(exc), "api_error", code="admin_unreachable")
        return web.json_response(_routes_view(view))

    async def put_weights(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        weights = body.get("weights")
        if not isinstance(weights, dict) or not weights:
            return error(400, "body needs \"weights\": a mapping of subset to weight, e.g. "
                         "{\"v1\": 90, \"v2\": 10}", param="weights", code="invalid_weights")
        route = body.get("route")
        params = {"route": str(route)} if route else None
        try:
            status, answer = await self.admin.call("PUT", "/weights", {"weights": weights},
                                                   params)
        except SourceError as exc:
            return error(502, str(exc), "api_error", code="admin_unreachable")
        log.info("console: weights %s -> HTTP %d", weights, status)
        return web.json_response(answer, status=status)

    async def rollout_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("promote", "abort"):
            return error(404, f"unknown rollout action {action!r} (promote or abort)",
                         param="action", code="unknown_action")
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        state = self.rollout()
        stable, canary = self.cfg.stable, self.cfg.canary
        if state is not None:
            stable = str(state.strategy.get("stable", stable))
            canary = str(state.strategy.get("canary", canary))
        live = (state is not None and self.rollout_store is not None and
                (not state.phase.terminal or state.aborting) and
                state.controller_pid is not None and state.controller_pid != os.getpid() and
                procs.alive(state.controller_pid))
        if live:
            assert self.rollout_store is not None
            # The controller takes the request on its next tick and moves the weights itself.
            self.rollout_store.request(action)
            return web.json_response({"action": action, "via": "controller",
                                      "controller_pid": state.controller_pid})
        weights = {stable: 100, canary: 0} if action == "abort" else {stable: 0, canary: 100}
        try:
            status, answer = await self.admin.call("PUT", "/weights", {"weights": weights})
        except SourceError as exc:
            return error(502, str(exc), "api_error", code="admin_unreachable")
        if status != 200:
            return web.json_response(answer, status=status)
        log.info("console: %s -> weights %s", action, weights)
        return web.json_response({"action": action, "via": "admin", **answer})

    async def get_rollout(self, request: web.Request) -> web.Response:
        state = self.rollout()
        history = list(self.history)
        body: dict[str, Any] = {"state_file": str(self.cfg.rollout_state or ""),
                                "history": history, "stable": self.cfg.stable,
                                "canary": self.cfg.canary}
        if state is None:
            body["rollout"] = None
            return web.json_response(body)
        strategy = state.strategy
        body["stable"] = strategy.get("stable", self.cfg.stable)
        body["canary"] = strategy.get("canary", self.cfg.canary)
        alive = state.controller_pid is not None and procs.alive(state.controller_pid)
        # Only display fields: `target` (which may hold the admin token) is never sent.
        body["rollout"] = {
            "phase": state.phase.value, "step": state.step,
            "steps": strategy.get("steps", []), "weights": state.weights,
            "message": state.message, "aborting": state.aborting,
            "source_error": state.source_error, "results": state.results,
            "events": [e.model_dump(mode="json") for e in state.events[-200:]],
            "started": state.started, "updated": state.updated,
            "controller_alive": alive, "evidence": evidence(state),
        }
        return web.json_response(body)

    async def quality(self, request: web.Request) -> web.Response:
        reports = quality_reports(self.cfg.reports_dir)
        return web.json_response({"reports_dir": str(self.cfg.reports_dir),
                                  "reports": reports})

    async def report_html(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        base = self.cfg.reports_dir.resolve()
        path = (base / "report.html") if name == "." else (base / name / "report.html")
        if "/" in name or name in ("..", "") or not path.resolve().is_relative_to(base) or \
                not path.is_file():
            return error(404, f"no report {name!r} under {self.cfg.reports_dir}",
                         param="name", code="unknown_report")
        resp = web.FileResponse(path)
        # The report is a static file of plots: no scripts, inline styles and data: images.
        resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src data:; "
                                                   "style-src 'unsafe-inline'; sandbox")
        return resp

    async def topology(self, request: web.Request) -> web.Response:
        """Kiali's versioned-app graph: client -> gateway -> each version, plus mirror edges.
        Edge figures are Istio telemetry over the window; node health follows Kiali's default
        tolerances (https://kiali.io/docs/configuration/health/: 5xx above 0 % degraded,
        above 10 % failure; 4xx above 10 % degraded, above 20 % failure), and a target that
        Prometheus finds down is a failure."""
        errors: list[str] = []
        view: dict[str, Any] = {}
        try:
            view = _routes_view(await self.admin.routes())
        except SourceError as exc:
            errors.append(str(exc))
        window = f"{int(max(15.0, 4 * self.cfg.scrape_interval))}s"
        services = sorted({h.split(".")[0] for h in view.get("hosts", [])})
        sel = 'reporter="destination"'
        if services:
            sel += f',destination_service_name=~"{"|".join(services)}"'
        queries = {
            "rps": f"sum by (destination_version) (rate(istio_requests_total{{{sel}}}"
                   f"[{window}]))",
            "err": f"sum by (destination_version) (rate(istio_requests_total{{{sel},"
                   f'response_code=~"5.."}}[{window}]))',
            "err4": f"sum by (destination_version) (rate(istio_requests_total{{{sel},"
                    f'response_code=~"4.."}}[{window}]))',
            "p95": f"histogram_quantile(0.95, sum by (destination_version, le) (rate("
                   f"istio_request_duration_milliseconds_bucket{{{sel}}}[{window}])))",
            "p95all": "histogram_quantile(0.95, sum by (le) (rate("
                      f"istio_request_duration_milliseconds_bucket{{{sel}}}[{window}])))",
            "mirror": "sum by (destination_version) (rate("
                      f"vllm_canary_gateway_mirror_requests_total[{window}]))",
            "up": 'min by (version) (up{version!=""})',
        }
        figures: dict[str, dict[str, float | None]] = {k: {} for k in queries}
        prom = self.prom
        if prom is None:
            errors.append("no Prometheus configured: no live figures")
        else:
            results = await asyncio.gather(*(prom.query(q) for q in queries.values()),
                                           return_exceptions=True)
            for key, res in zip(queries, results, strict=True):
                if isinstance(res, SourceError):
                    errors.append(f"{key}: {res}")
                elif isinstance(res, BaseException):
                    raise res
                else:
                    figures[key] = instant_by(res, "version" if key == "up" else
                                              "destination_version")
        weights: dict[str, int] = view.get("weights", {})
        mirrors = view.get("mirrors", [])
        versions = sorted(set(weights) | set(view.get("subsets", [])) |
                          {m["subset"] for m in mirrors if m["subset"]} |
                          {v for v in figures["rps"] if v and v != "unknown"})
        nodes = [{"id": "client", "kind": "client", "label": "client", "health": "none"}]
        edges = []
        total = sum(v or 0.0 for v in figures["rps"].values())
        total_err = sum(v or 0.0 for v in figures["err"].values())
        total_err4 = sum(v or 0.0 for v in figures["err4"].values())
        gw_health = _health(total, total_err, None, total_err4)
        nodes.append({"id": "gateway", "kind": "gateway", "label": "gateway",
                      "health": gw_health})
        edges.append(_edge("client", "gateway", "client", total, total_err,
                           figures["p95all"].get(""), None))
        for v in versions:
            rps, err = figures["rps"].get(v), figures["err"].get(v)
            nodes.append({"id": v, "kind": "version", "label": v, "up": figures["up"].get(v),
                          "health": _health(rps or 0.0, err or 0.0, figures["up"].get(v),
                                            figures["err4"].get(v) or 0.0)})
            edges.append(_edge("gateway", v, "route", rps or 0.0, err or 0.0,
                               figures["p95"].get(v), weights.get(v)))
        for m in mirrors:
            if m["subset"]:
                rate = figures["mirror"].get(m["subset"])
                edges.append({"id": f"mirror-{m['route']}-{m['subset']}", "source": "gateway",
                              "target": m["subset"], "kind": "mirror", "rps": rate or 0.0,
                              "percent": m["percent"], "route": m["route"]})
        return web.json_response({"window": window, "nodes": nodes, "edges": edges,
                                  "errors": errors, "at": time.time(),
                                  "colours": colours(versions, self.cfg.stable,
                                                     self.cfg.canary)})

    # ---- history -----------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sample()
            await asyncio.sleep(self.cfg.sample_interval)

    async def sample(self) -> dict[str, Any]:
        """One point of the rollout charts: weights in force and each metric's evidence."""
        point: dict[str, Any] = {"t": time.time()}
        if self.cfg.admin_url:
            try:
                point["weights"] = (await self.admin.routes()).get("weights", {})
            except SourceError:
                point["weights"] = None
        state = self.rollout()
        if state is not None:
            point.update(phase=state.phase.value, step=state.step,
                         evidence={m: {"log_bf": e["log_bf"], "boundary": e["boundary"]}
                                   for m, e in evidence(state).items()})
        self.history.append(point)
        return point


def evidence(state: RolloutState) -> dict[str, dict[str, Any]]:
    """Each sequential test's evidence: log Bayes factor against "the canary is no worse",
    and the boundary log(1/alpha) at which it rejects (the abort line)."""
    out = {}
    for metric, data in (state.analysis.get("tests") or {}).items():
        try:
            t = RateRatioTest.from_dict(data)
        except (TypeError, ValueError):
            continue
        ratio = t.ratio_estimate()
        out[metric] = {"log_bf": round(t.log_bf, 4), "max_log_bf": round(t.max_log_bf, 4),
                       "boundary": round(math.log(1.0 / t.alpha), 4),
                       "p_value": float(t.p_value), "rejected": bool(t.rejected),
                       "events_canary": int(t.events_c), "events_baseline": int(t.events_b),
                       "requests_canary": int(t.requests_c),
                       "requests_baseline": int(t.requests_b),
                       "ratio": None if ratio is None else float(ratio)}
    return out


def _routes_view(view: dict[str, Any]) -> dict[str, Any]:
    """The admin API's view, minus nothing secret, plus what the page draws from the objects:
    mirror edges, subsets, route matches and destination hosts."""
    vss = view.get("virtualservices", []) or []
    # The admin API's own figures per route: `weights` in percent (Istio weights are
    # relative), `configured` as written; preferred over re-reading the objects.
    given = {(r.get("virtualservice"), r.get("name")): r for r in view.get("routes", []) or []}
    routes = []
    hosts: set[str] = set()
    for vs in vss:
        for i, http in enumerate(vs.get("spec", {}).get("http", []) or []):
            dests = http.get("route", []) or []
            hosts.update(str(d.get("destination", {}).get("host", "")) for d in dests)
            vs_name, name = vs.get("metadata", {}).get("name", ""), http.get("name")
            raw = {str(d.get("destination", {}).get("subset", "")):
                   d.get("weight", 100 if len(dests) == 1 else 0) for d in dests}
            admin = given.get((vs_name, name), {})
            routes.append({"virtualservice": vs_name, "name": name or f"[{i}]",
                           "match": http.get("match", []),
                           "weights": admin.get("weights", raw),
                           "configured": admin.get("configured", raw),
                           "weighted": len(dests) > 1})
    subsets = sorted({str(s.get("name")) for dr in view.get("destinationrules", []) or []
                      for s in dr.get("spec", {}).get("subsets", []) or []})
    return {"weights": view.get("weights", {}), "routes": routes or view.get("routes", []),
            "generation": view.get("generation"), "source": view.get("source"),
            "last_error": view.get("last_error"), "mirrors": mirrors_of(vss),
            "subsets": subsets, "hosts": sorted(h for h in hosts if h)}


def _edge(source: str, target: str, kind: str, rps: float, err: float, p95: float | None,
          weight: int | None) -> dict[str, Any]:
    return {"id": f"{source}-{target}", "source": source, "target": target, "kind": kind,
            "rps": rps, "error_pct": (100.0 * err / rps) if rps > 0 else None,
            "p95_ms": p95, "weight": weight}


def _health(rps: float, err5: float, up: float | None, err4: float = 0.0) -> str:
    """Kiali's rule: the worst of each code class's verdict (percent of requests above the
    class's `failure`, else above its `degraded` tolerance); a down target fails."""
    if up is not None and up < 1:
        return "failure"
    if rps <= 0:
        return "idle"
    verdicts = set()
    for errors, degraded, failure in ((err5, 0.0, 10.0), (err4, 10.0, 20.0)):
        pct = 100.0 * errors / rps
        verdicts.add("failure" if pct > failure else "degraded" if pct > degraded else "healthy")
    return next(h for h in ("failure", "degraded", "healthy") if h in verdicts)


def _cross_site(request: web.Request) -> str:
    """Why a mutation is refused as cross-site ("" when it is not)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"cross-site request refused (Origin {origin} is not this console)"
    if request.headers.get(MUTATION_HEADER) != "1":
        return f"missing header {MUTATION_HEADER}: 1 (send changes from the console page)"
    return ""


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":
        return error(415, "send a JSON body with Content-Type: application/json",
                     code="unsupported_media_type")
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return error(400, "body is not JSON", code="invalid_json")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object", code="invalid_json")
    return body


async def serve(cfg: ConsoleConfig, ready: Callable[[], None] | None = None) -> None:
    """Run until cancelled (Ctrl-C); `ready` is called once the port listens."""
    console = Console(cfg)
    runner = web.AppRunner(console.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    try:
        await site.start()
        if ready:
            ready()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()
