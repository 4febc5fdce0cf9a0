"""The console server without a browser: the dashboard's variables as Grafana substitutes them,
query_range answers aligned for uPlot, and the API's guards (token server-side, cross-site
mutations refused, Host checked) in front of the gateway's real admin API."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from vllm_canary.cli import main
from vllm_canary.console import dashboard as dash
from vllm_canary.console.server import Console, ConsoleConfig, colours
from vllm_canary.gateway.admin import admin_app
from vllm_canary.gateway.store import RouteStore, default_routes_path
from vllm_canary.rollout.state import RolloutState, StateStore

CHART_DASHBOARD = ROOT / "deploy" / "helm" / "vllm-canary" / "files" / "vllm-sre.json"
TOKEN = "s3cret-admin-token"
MUTATE = {"X-Console-Request": "1", "Content-Type": "application/json"}


# ---- the dashboard ---------------------------------------------------------------------

def test_the_package_reads_the_charts_dashboard_file() -> None:
    assert dash.default_dashboard_path().resolve() == CHART_DASHBOARD.resolve()
    d = dash.load(dash.default_dashboard_path())
    drawn = [p for p in d.panels if p.type == "timeseries"]
    assert len(drawn) >= 15 and all(p.targets for p in drawn)
    titles = {p.title for p in drawn}
    assert {"KV-cache usage (vLLM)", "Running and waiting requests (vLLM)",
            "Queue time p50 / p95 (vLLM)", "Prefix-cache hit rate (vLLM)"} <= titles
    assert dash.parse_label_values(d.version_query) == ("vllm_requests_total", "version")


def test_every_expression_is_left_with_no_grafana_variable() -> None:
    d = dash.load(CHART_DASHBOARD)
    for p in d.panels:
        for t in p.targets:
            expr = dash.substitute(t.expr, "(v1|v2)", 4.0, 900.0, 1.0)
            assert "$" not in expr, (p.title, expr)
            assert "[$__rate_interval]" not in expr


@pytest.mark.parametrize(("step", "scrape", "want"), [
    (1, 1, "4s"),  # 4 x scrape wins
    (15, 1, "16s"),  # step + scrape
    (15, 15, "60s"),  # Grafana's classic 1m for a 15 s scrape
])
def test_rate_interval_is_grafanas(step: float, scrape: float, want: str) -> None:
    assert dash.rate_interval(step, scrape) == want


def test_version_variable() -> None:
    assert dash.version_regex([]) == ".+"
    assert dash.version_regex(["All"]) == ".+"
    assert dash.version_regex(["v1"]) == "v1"
    assert dash.version_regex(["v1", "v2"]) == "(v1|v2)"
    assert dash.version_regex(["a.b"]) == r"a\.b"


def test_times_and_steps() -> None:
    now = 1_800_000_000.0
    assert dash.parse_time("now", now) == now
    assert dash.parse_time("now-15m", now) == now - 900
    assert dash.parse_time("1800000000000", now) == now  # epoch milliseconds
    with pytest.raises(ValueError, match="not a time"):
        dash.parse_time("yesterday", now)
    assert dash.step_for(3600, 1) == 15  # 240 points an hour
    assert dash.step_for(60, 15) == 15  # never under the scrape interval


def test_align_puts_samples_on_the_step_grid() -> None:
    t = dash.Target("A", "x", "{{version}} p95")
    result = [{"metric": {"version": "v2"}, "values": [[100, "1.5"], [110, "NaN"]]},
              {"metric": {"destination_version": "v1"}, "values": [[105, "2"]]}]
    out = dash.align([(t, result)], 100, 110, 5)
    assert out["x"] == [100, 105, 110]
    by = {s["version"]: s for s in out["series"]}
    assert by["v2"]["values"] == [1.5, None, None] and by["v2"]["points"] == 1
    assert by["v1"]["values"] == [None, 2.0, None] and by["v1"]["name"] == "p95"
    assert [s["version"] for s in out["series"]] == ["v1", "v2"]


def test_colours_are_fixed_per_version() -> None:
    c = colours(["v3", "v2", "v1"])
    assert c["v1"] == "#3274d9" and c["v2"] == "#ff9830"
    assert colours(["v2", "v1"]) == {k: c[k] for k in ("v1", "v2")}


# ---- the server, in front of the real admin API ------------------------------------------

@pytest.fixture
async def admin(aiohttp_server: Any, tmp_path: Path) -> Any:
    routes = tmp_path / "routes.yaml"
    shutil.copy(default_routes_path(), routes)
    store = RouteStore(routes)
    server = await aiohttp_server(admin_app(store, TOKEN))
    server.store = store
    return server


@pytest.fixture
def rollout_file(tmp_path: Path) -> Path:
    return tmp_path / "rollout.json"


@pytest.fixture
async def client(aiohttp_client: Any, admin: Any, tmp_path: Path, rollout_file: Path) -> Any:
    cfg = ConsoleConfig(prometheus_url=None, admin_url=str(admin.make_url("")).rstrip("/"),
                        admin_token=TOKEN, reports_dir=tmp_path / "reports",
                        rollout_state=rollout_file, sample_interval=0.2)
    console = Console(cfg)
    c = await aiohttp_client(console.app())
    cfg.port = c.server.port  # the Host guard expects the port we listen on
    c.console = console
    return c


async def _text(resp: Any) -> str:
    return await resp.text()


async def test_the_page_and_config_never_carry_the_token(client: Any) -> None:
    for path in ("/", "/static/app.js", "/api/config", "/api/routes", "/api/rollout",
                 "/api/topology", "/api/quality"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert TOKEN not in await _text(resp), path
    cfg = await (await client.get("/api/config")).json()
    assert cfg["colours"]["v1"] == "#3274d9"
    assert "no Prometheus configured" in cfg["warning"]


async def test_weights_go_through_the_admin_api(client: Any, admin: Any) -> None:
    resp = await client.put("/api/weights", json={"weights": {"v1": 60, "v2": 40}},
                            headers=MUTATE)
    assert resp.status == 200, await resp.text()
    assert admin.store.current_weights() == {"v1": 60, "v2": 40}
    bad = await client.put("/api/weights", json={"weights": {"v9": 100}}, headers=MUTATE)
    assert bad.status == 400  # the admin API's own refusal, passed on
    assert "v9" in (await bad.json())["error"]["message"]


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json"},  # no custom header: a plain cross-site form/fetch
    {**MUTATE, "Origin": "http://evil.example"},
    {**MUTATE, "Sec-Fetch-Site": "cross-site"},
    {**MUTATE, "Sec-Fetch-Site": "same-site"},
])
async def test_cross_site_mutations_are_refused(client: Any, admin: Any,
                                                headers: dict[str, str]) -> None:
    before = admin.store.current_weights()
    resp = await client.put("/api/weights", json={"weights": {"v1": 50, "v2": 50}},
                            headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "cross_site_refused"
    resp = await client.post("/api/rollout/abort", json={}, headers=headers)
    assert resp.status == 403
    assert admin.store.current_weights() == before


async def test_same_origin_and_preflight(client: Any) -> None:
    origin = f"http://127.0.0.1:{client.server.port}"
    ok = await client.put("/api/weights", json={"weights": {"v1": 90, "v2": 10}},
                          headers={**MUTATE, "Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert ok.status == 200
    pre = await client.options("/api/weights", headers={"Origin": "http://evil.example"})
    assert pre.status == 403 and "Access-Control-Allow-Origin" not in pre.headers
    plain = await client.put("/api/weights", data="weights", headers={"X-Console-Request": "1"})
    assert plain.status == 415


async def test_other_hosts_are_refused(client: Any) -> None:
    resp = await client.get("/api/routes", headers={"Host": "attacker.example:3000"})
    assert resp.status == 421  # DNS rebinding: a page on another name reaching loopback
    assert "--allow-host attacker.example:3000" in (await resp.json())["error"]["message"]
    client.console.cfg.extra_hosts = ("tunnel.local:8000",)
    ok = await client.get("/api/config", headers={"Host": "tunnel.local:8000"})
    assert ok.status == 200


async def test_abort_and_promote_without_a_controller_set_weights(client: Any,
                                                                  admin: Any) -> None:
    resp = await client.post("/api/rollout/abort", json={}, headers=MUTATE)
    assert resp.status == 200 and (await resp.json())["via"] == "admin"
    assert admin.store.current_weights() == {"v1": 100, "v2": 0}
    await client.post("/api/rollout/promote", json={}, headers=MUTATE)
    assert admin.store.current_weights() == {"v1": 0, "v2": 100}
    assert (await client.post("/api/rollout/pause", json={}, headers=MUTATE)).status == 404


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


async def test_a_live_rollout_gets_the_request_and_its_secrets_stay(
        client: Any, admin: Any, rollout_file: Path, live_pid: int) -> None:
    state = RolloutState(strategy={"steps": [{"setWeight": 20}, {"analysis": {}}],
                                   "stable": "v1", "canary": "v2"},
                         target={"admin_url": "http://x", "admin_token": "STATE-SECRET"},
                         phase="Analyzing", step=1, weights={"v1": 80, "v2": 20},
                         controller_pid=live_pid,
                         analysis={"tests": {"error-rate": {"delta0": 1.0, "alpha": 0.005,
                                                            "events_c": 3, "requests_c": 50,
                                                            "events_b": 1, "requests_b": 200}}})
    store = StateStore(rollout_file)
    store.save(state)
    body = await (await client.get("/api/rollout")).text()
    assert "STATE-SECRET" not in body and TOKEN not in body
    ro = json.loads(body)["rollout"]
    assert ro["phase"] == "Analyzing" and ro["controller_alive"] is True
    assert ro["evidence"]["error-rate"]["boundary"] == pytest.approx(math.log(200), abs=1e-3)
    before = admin.store.current_weights()
    resp = await client.post("/api/rollout/abort", json={}, headers=MUTATE)
    assert (await resp.json())["via"] == "controller"
    assert store.take_request() == "abort"
    assert admin.store.current_weights() == before  # the controller moves the weights
    deadline = time.monotonic() + 5
    history: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not history:
        history = [p for p in (await (await client.get("/api/rollout")).json())["history"]
                   if "evidence" in p]
        await __import__("asyncio").sleep(0.1)
    assert history and history[-1]["evidence"]["error-rate"]["boundary"] > 0


async def test_panels_without_prometheus_say_so(client: Any) -> None:
    body = await (await client.get("/api/panels/2?from=now-5m")).json()
    assert body["series"] == [] and "no Prometheus" in body["error"]
    assert (await client.get("/api/panels/999")).status == 404
    assert (await client.get("/api/panels/1")).status == 404  # a row, not a chart
    assert (await client.get("/api/panels/2?from=soon")).status == 400
    assert (await client.get("/api/panels/2?from=now&to=now-5m")).status == 400


async def test_reports_are_listed_and_served_inside_their_folder(client: Any,
                                                                tmp_path: Path) -> None:
    day = tmp_path / "reports" / "20261201"
    day.mkdir(parents=True)
    (day / "decision.json").write_text(json.dumps({"decision": "promote", "reasons": ["ok"],
                                                   "day": "20261201"}))
    (day / "report.html").write_text("<p>the report</p>")
    (tmp_path / "reports" / "broken").mkdir()
    (tmp_path / "reports" / "broken" / "decision.json").write_text("{not json")
    q = await (await client.get("/api/quality")).json()
    names = {r["name"]: r for r in q["reports"]}
    assert names["20261201"]["doc"]["decision"] == "promote" and names["20261201"]["has_html"]
    assert "not readable" in names["broken"]["error"]
    resp = await client.get("/reports/20261201/report.html")
    assert resp.status == 200 and "sandbox" in resp.headers["Content-Security-Policy"]
    for bad in ("/reports/../report.html", "/reports/%2E%2E/report.html",
                "/reports/nope/report.html"):
        assert (await client.get(bad)).status == 404, bad


# ---- the command -------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "needle"), [
    (["--port", "0"], "not a TCP port"),
    (["--admin-url", "http://127.0.0.1:1"], "needs $VLLM_CANARY_ADMIN_TOKEN or --admin-token-file"),
    (["--prometheus", "localhost:9090"], "not an http:// URL"),
    (["--dashboard", "/nonexistent/d.json"], "dashboard /nonexistent/d.json"),
    (["--scrape-interval", "soon"], "--scrape-interval"),
])
def test_bad_flags_are_one_line(argv: list[str], needle: str, capsys: Any,
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLLM_CANARY_STATE", str(tmp_path / "none.json"))
    monkeypatch.delenv("VLLM_CANARY_ADMIN_TOKEN", raising=False)
    assert main(["console", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_dashboard_that_is_not_one_is_refused(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps({"title": "x"}))
    assert main(["console", "--dashboard", str(bad)]) == 2
    assert "no `panels` list" in capsys.readouterr().err


def test_the_console_serves_the_static_assets_offline() -> None:
    static = ROOT / "src" / "vllm_canary" / "console" / "static"
    html = (static / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN
    for ref in ("vendor/uplot/uPlot.iife.min.js", "vendor/cytoscape/cytoscape.min.js"):
        assert f"/static/{ref}" in html and (static / ref).stat().st_size > 10_000
    for lib in ("uplot", "cytoscape"):
        assert "Permission is hereby granted" in (static / "vendor" / lib / "LICENSE").read_text()
    assert os.access(static / "app.js", os.R_OK)


def test_mirror_edges_come_from_the_virtual_services() -> None:
    from vllm_canary.console.sources import mirrors_of

    vs = [{"metadata": {"name": "vllm"}, "spec": {"http": [
        {"name": "canary", "route": [{"destination": {"subset": "v1"}}],
         "mirror": {"host": "vllm-service", "subset": "v2"},
         "mirrorPercentage": {"value": 25.0}},
        {"route": [{"destination": {"subset": "v1"}}],
         "mirrors": [{"destination": {"host": "vllm-service", "subset": "v3"}}]},
        {"name": "plain", "route": [{"destination": {"subset": "v1"}}]}]}}]
    assert mirrors_of(vs) == [
        {"route": "canary", "subset": "v2", "host": "vllm-service", "percent": 25.0},
        # Istio mirrors everything when no percentage is given.
        {"route": "vllm[1]", "subset": "v3", "host": "vllm-service", "percent": 100.0}]


@pytest.mark.parametrize(("rps", "err5", "err4", "up", "want"), [
    (10, 0, 0, 1, "healthy"),
    (10, 0.01, 0, 1, "degraded"),  # any 5xx
    (10, 1.5, 0, 1, "failure"),  # 15 % 5xx
    (10, 0, 1.5, 1, "degraded"),  # 15 % 4xx
    (10, 0, 2.5, 1, "failure"),  # 25 % 4xx
    (10, 0, 0, 0, "failure"),  # the target is down
    (0, 0, 0, None, "idle"),
])
def test_node_health_is_kialis(rps: float, err5: float, err4: float, up: float | None,
                               want: str) -> None:
    from vllm_canary.console.server import _health

    assert _health(rps, err5, up, err4) == want
