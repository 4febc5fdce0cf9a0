"""Every PromQL expression of the vLLM-SRE dashboard and the alert rules runs against a real
Prometheus scraping local model servers (and the gateway) and returns the versions it should.

The stack: v1 (healthy), v2 (a bad canary: slow and failing 30%), v3 (up but given no traffic),
optionally `vllm-canary gateway` executing the chart's own VirtualService in front of v1 + v2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.fixtures.k8s import ROOT
from tests.fixtures.server import CLI, RunningServer, start_server
from vllm_canary import procs
from vllm_canary.promserver import INSTALL_HINT, PrometheusServer, find_binary

DASHBOARD = ROOT / "deploy" / "grafana" / "vllm-sre.json"
RULES = ROOT / "deploy" / "prometheus" / "vllm-canary.rules.yaml"
GRAFANA_VARS = {"$__rate_interval": "1m", "$version": ".+"}


class LocalPrometheus(PrometheusServer):
    """One `vllm-service` job whose targets carry their version, as the chart's ServiceMonitor
    relabels them in a cluster (honor_labels: our series bring `version` themselves)."""

    targets: dict[str, str] = {}
    gateway: str | None = None

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["scrape_configs"] = [{
            "job_name": "vllm-service", "honor_labels": True,
            "static_configs": [{"targets": [t], "labels": {"version": v}}
                               for v, t in self.targets.items()]}]
        if self.gateway:
            cfg["scrape_configs"].append({"job_name": "istio-gateway",
                                          "static_configs": [{"targets": [self.gateway]}]})
        return cfg


@dataclass
class Stack:
    servers: dict[str, RunningServer]
    prometheus: LocalPrometheus
    gateway_url: str | None
    procs: list[Any] = field(default_factory=list)


def _post(url: str, headers: dict[str, str] | None = None) -> int:
    body = json.dumps({"prompt": "hello there", "max_tokens": 5}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", body, {
        "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _gateway_available() -> bool:
    try:
        proc = subprocess.run([CLI, "gateway", "--help"], capture_output=True, timeout=60)
    except OSError:
        return False
    return proc.returncode == 0


def _start_gateway(
    tmp: Path, render: Any, servers: dict[str, RunningServer]
) -> tuple[Any, str, int]:
    routes = tmp / "routes.yaml"
    docs = [m.obj for m in render().manifests if m.kind in ("VirtualService", "DestinationRule")]
    routes.write_text(yaml.safe_dump_all(docs))
    port, mport, aport = procs.free_port(), procs.free_port(), procs.free_port()
    argv = [CLI, "gateway", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(mport), "--admin-port", str(aport), "--seed", "1"]
    for v in ("v1", "v2"):
        argv += ["--upstream", f"{v}={servers[v].url}"]
    proc = procs.start(argv, env={"VLLM_CANARY_ADMIN_TOKEN": "t"}, log=tmp / "gateway.log")
    try:
        procs.wait_http(f"http://127.0.0.1:{mport}/metrics", 60, proc)
    except Exception:
        procs.stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}", mport


def _wait_for(prom: PrometheusServer, promql: str, want: set[str], timeout: float = 60.0,
              label: str = "version") -> set[str]:
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = {s["metric"].get(label, "") for s in prom.query(promql)}
        if want <= got:
            break
        time.sleep(0.5)
    return got


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, render: Any) -> Iterator[Stack]:
    require(find_binary() is not None, "prometheus", INSTALL_HINT)
    tmp = tmp_path_factory.mktemp("promql")
    servers: dict[str, RunningServer] = {}
    gateway = None
    prom = None
    try:
        servers["v1"] = start_server(tmp, "v1", "--seed", "1")
        servers["v2"] = start_server(tmp, "v2", "--latency-factor", "0.6",
                                     "--error-rate", "0.3", "--seed", "2")
        servers["v3"] = start_server(tmp, "v3", "--seed", "3")
        gateway_url = None
        targets = {v: f"127.0.0.1:{s.metrics_port}" for v, s in servers.items()}
        gateway_target = None
        if _gateway_available():
            gateway, gateway_url, gport = _start_gateway(tmp, render, servers)
            gateway_target = f"127.0.0.1:{gport}"
        prom = LocalPrometheus(tmp / "prometheus", jobs=[])
        prom.targets, prom.gateway = targets, gateway_target
        prom.start()
        _wait_for(prom, "up == 1", set(targets), label="version")
        # Traffic spread over several scrapes (rate() needs the counters to move between
        # samples): 90/10 plus header A/B through the gateway when it is there, else direct.
        plain = gateway_url or servers["v1"].url
        ab = gateway_url or servers["v2"].url
        codes: list[int] = []
        with ThreadPoolExecutor(max_workers=6) as pool:
            for _ in range(12):
                codes += pool.map(lambda i: _post(plain if i % 2 else ab,
                                                  {"x-ab-test": "v2"} if i % 2 == 0 else {}),
                                  range(20))
                time.sleep(0.5)
        assert codes.count(200) > 120, codes
        stack = Stack(servers, prom, gateway_url)
        _wait_for(prom, "sum by (version) (rate(vllm_requests_total[1m])) > 0", {"v1", "v2"})
        yield stack
    finally:
        if prom is not None:
            prom.stop()
        if gateway is not None:
            procs.stop(gateway)
        for s in servers.values():
            s.stop()


def _dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            found.append((f"{panel['title']} [{target['refId']}]", expr))
    return found


def _versions(series: list[dict[str, Any]]) -> set[str]:
    return {s["metric"].get("version") or s["metric"].get("destination_version", "")
            for s in series}


def test_dashboard_server_queries_return_both_versions(stack: Stack):
    # vLLM's own `vllm:` series come from vLLM itself (test_native_vllm_panels_...).
    queries = [(n, q) for n, q in _dashboard_queries() if "istio_" not in q and "vllm:" not in q]
    assert len(queries) >= 12
    missing = {}
    for name, expr in queries:
        got = _versions(stack.prometheus.query(expr))
        if not {"v1", "v2"} <= got:
            missing[name] = (expr, sorted(got))
    assert not missing, missing


def test_dashboard_istio_queries_return_both_versions(stack: Stack):
    if stack.gateway_url is None:
        pytest.skip("`vllm-canary gateway` is not in this checkout yet: Istio panels unchecked")
    queries = [(n, q) for n, q in _dashboard_queries() if "istio_" in q]
    assert len(queries) >= 3
    _wait_for(stack.prometheus, "sum by (destination_version) (istio_requests_total)",
              {"v1", "v2"}, label="destination_version")
    missing = {}
    for name, expr in queries:
        got = _versions(stack.prometheus.query(expr))
        if not {"v1", "v2"} <= got:
            missing[name] = (expr, sorted(got))
    assert not missing, missing


def _alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return {r["alert"]: r["expr"] for r in rules}


def test_alert_expressions_pick_the_bad_version(stack: Stack):
    exprs = _alert_exprs()
    prom = stack.prometheus
    assert _versions(prom.query(exprs["VLLMCanaryErrorRateHigh"])) == {"v2"}
    assert _versions(prom.query(exprs["VLLMCanaryLatencyRegression"])) == {"v2"}
    assert _versions(prom.query(exprs["VLLMCanaryNoTraffic"])) == {"v3"}
    assert _versions(prom.query(exprs["VLLMVersionDown"])) == set()
    # The measurement under each comparison covers every version with traffic.
    ratio = ("sum by (version) (rate(vllm_requests_total{status=~\"5..\"}[5m])) or "
             "sum by (version) (rate(vllm_requests_total[5m])) * 0")
    assert {"v1", "v2"} <= _versions(prom.query(ratio))
    # Stop v3: its target goes down and VLLMVersionDown names it.
    stack.servers["v3"].stop()
    got = _wait_for(prom, exprs["VLLMVersionDown"], {"v3"}, timeout=30)
    assert got == {"v3"}


def _cli_has(command: str) -> bool:
    try:
        proc = subprocess.run([CLI, command, "--help"], capture_output=True, timeout=60)
    except OSError:
        return False
    return proc.returncode == 0


def test_argo_web_metrics_are_answered_by_analyze_serve(stack: Stack, render: Any,
                                                        tmp_path: Path):
    """The chart's AnalysisTemplate `web` metrics, pointed at a real `analyze --serve` that
    reads this Prometheus, get a verdict Argo's jsonPath and conditions understand."""
    if not _cli_has("analyze"):
        pytest.skip("`vllm-canary analyze` is not in this checkout yet")
    rendered = render({"rollouts": {"enabled": True, "analysis": {"web": {"enabled": True}}}})
    template = next(m.obj for m in rendered.manifests if m.kind == "AnalysisTemplate")
    web = [m for m in template["spec"]["metrics"] if "web" in m["provider"]]
    assert [m["provider"]["web"]["jsonPath"] for m in web] == ["{$.verdict}"] * len(web)
    port = procs.free_port()
    proc = procs.start([CLI, "analyze", "--serve", "--host", "127.0.0.1", "--port", str(port),
                        "--prometheus", stack.prometheus.url,
                        "--admin-url", "http://127.0.0.1:9", "--admin-token", "unused"],
                       log=tmp_path / "analyze.log")
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        for metric in web:
            url = metric["provider"]["web"]["url"]
            path = url[url.index("/analyze?"):]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                body = json.load(resp)
            assert body["verdict"] in ("pass", "fail", "inconclusive"), (path, body)
            assert metric["successCondition"] == 'result == "pass"'
            assert metric["failureCondition"] == 'result == "fail"'
    finally:
        procs.stop(proc)


# ---- vLLM's own metrics: `up --engine vllm` on the real vLLM CPU build --------------------

UP_PORTS = ("--v1-port", "--v1-metrics-port", "--v2-port", "--v2-metrics-port", "--port",
            "--metrics-port", "--admin-port", "--prometheus-port", "--console-port")
VLLM_UP_ARGS = "--max-model-len 256 --dtype float32 --enforce-eager"


@dataclass
class VllmUp:
    prometheus: str
    gateway: str
    console: str


@pytest.fixture(scope="module")
def vllm_up(tmp_path_factory: pytest.TempPathFactory, vllm_setup: Any) -> Iterator[VllmUp]:
    """`vllm-canary up --engine vllm` on the tiny v1/v2 models: its Prometheus scrapes the
    gateway, both fronts and both vLLM children (the `vllm:` series), each with `version`."""
    require(find_binary() is not None, "prometheus", INSTALL_HINT)
    tmp = tmp_path_factory.mktemp("vllm-up")
    ports = {flag: procs.free_port() for flag in UP_PORTS}
    argv = [CLI, "up", "--engine", "vllm", "--log-dir", str(tmp / "logs"),
            "--model-v1", str(vllm_setup.models["v1"]), "--model-v2",
            str(vllm_setup.models["v2"]), "--vllm-args", VLLM_UP_ARGS,
            "--startup-timeout", "300", "--seed", "1"]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    env = {**os.environ, "VLLM_CANARY_STATE": str(tmp / "state.json")}
    out = tmp / "up.out"
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=out.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while "Ctrl-C" not in out.read_text(errors="replace"):
            assert proc.poll() is None, f"up exited {proc.returncode}:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"up not ready:\n{out.read_text()}"
            time.sleep(1)
        assert "prometheus     http://" in out.read_text(), out.read_text()
        yield VllmUp(f"http://127.0.0.1:{ports['--prometheus-port']}",
                     f"http://127.0.0.1:{ports['--port']}",
                     f"http://127.0.0.1:{ports['--console-port']}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_native_vllm_panels_return_both_versions(vllm_up: VllmUp):
    queries = [(n, q) for n, q in _dashboard_queries() if "vllm:" in q]
    assert len(queries) >= 5  # KV cache, running, waiting, queue p50/p95, prefix-cache
    prom = PrometheusServer(Path("."), jobs=[])
    prom.host, prom.port = "127.0.0.1", int(vllm_up.prometheus.rsplit(":", 1)[1])
    got = _wait_for(prom, 'up{job="vllm-engine"} == 1', {"v1", "v2"})
    assert got == {"v1", "v2"}, got
    # The same prompt again and again (prefix-cache hits), spread over several scrapes.
    codes: list[int] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(8):
            codes += pool.map(lambda i: _post(vllm_up.gateway,
                                              {"x-ab-test": "v2"} if i % 2 else {}), range(8))
            time.sleep(0.5)
    assert codes.count(200) == len(codes), codes
    missing = {}
    for name, expr in queries:
        got = _wait_for(prom, expr, {"v1", "v2"}, timeout=20)
        if not {"v1", "v2"} <= got:
            missing[name] = (expr, sorted(got))
    assert not missing, missing


def test_native_panels_draw_v1_and_v2_in_the_console(vllm_up: VllmUp):
    """The console of that stack, in headless Chromium: vLLM's own panels draw both versions
    (on the sim engine they say "No data": tests/e2e/test_console.py)."""
    from tests.e2e.test_console import CHROMIUM, Traffic, sync_playwright

    require(Path(CHROMIUM).exists(), "chromium", "scripts/setup.d/40-chromium.sh")
    dash = json.loads(DASHBOARD.read_text())
    native = {str(p["id"]) for p in dash["panels"]
              if p["type"] == "timeseries" and "vllm:" in json.dumps(p.get("targets"))}
    assert len(native) == 4
    with Traffic(vllm_up.gateway), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(vllm_up.console + "/#dashboard")
        page.wait_for_function("""(ids) => ids.every(id => {
            const p = window.consoleState.panels[id];
            if (!p || p.state !== "data") return false;
            const v = new Set(p.series.filter(s => s.points >= 2).map(s => s.version));
            return v.has("v1") && v.has("v2"); })""", arg=sorted(native), timeout=45000)
        out = ROOT / "test-artifacts" / "console"
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "dashboard-vllm.png"), full_page=True)
        browser.close()
