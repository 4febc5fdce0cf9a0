"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright for
Python through executable_path) on one `vllm-canary up` stack with steady traffic: every
dashboard panel draws v1 and v2, the topology's rates agree with the gateway's /metrics, a
weight set in the page is what `routes get` reads, and Abort puts 100/0.

Screenshots go to test-artifacts/console/ (git-ignored) for a person to look at."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, require
from tests.e2e.test_up import CLI, Stack, free_ports, start_stack, stop_stack
from tests.unit.test_evaluate import items, planted, rating_export
from vllm_canary import procs, promserver
from vllm_canary.cli import main
from vllm_canary.gateway.store import default_routes_path

ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BODY = b'{"prompt":"hello","max_tokens":5}'
pytestmark = pytest.mark.real


class Traffic:
    """Steady load through the gateway: 3 plain workers (90/10) and 1 with `x-ab-test: v2`,
    so both versions get traffic whatever the weights are."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i == 0,), daemon=True)
                        for i in range(4)]

    def _run(self, ab: bool) -> None:
        headers = {"x-ab-test": "v2"} if ab else {}
        while not self.stop.is_set():
            req = urllib.request.Request(self.url + "/v1/completions", BODY, headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
            except (urllib.error.URLError, OSError):
                pass
            self.stop.wait(0.04)

    def __enter__(self) -> Traffic:
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def _evaluate(reports: Path, day: str, mean_v1: float, mean_v2: float) -> None:
    """A real `vllm-canary evaluate` (planted ratings, as its unit tests plant them) writing
    <reports>/<day>/decision.json and report.html, which the Quality tab reads."""
    samples, labels = reports / f"{day}.samples.jsonl", reports / f"{day}.labels.json"
    samples.write_text("".join(json.dumps(i) + "\n" for i in items(80)))
    labels.write_text(json.dumps(rating_export(planted(mean_v1, mean_v2, 80))))
    main(["evaluate", "--samples", str(samples), "--labels", str(labels),
          "--out", str(reports / day)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(promserver.find_binary() is not None, "prometheus", promserver.INSTALL_HINT)
    require(Path(CHROMIUM).exists(), "chromium",
            "apt-get install -y --no-install-recommends chromium (scripts/setup.d/40-chromium.sh)")
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "reports").mkdir()
    _evaluate(tmp / "reports", "20261130", 3.8, 2.9)  # v2 worse: rollback
    _evaluate(tmp / "reports", "20261201", 3.0, 3.8)  # v2 better: promote
    # The chart's routing plus a 50 % mirror of the canary route to v2 (a dark launch).
    docs = list(yaml.safe_load_all(default_routes_path().read_text()))
    canary = next(r for r in docs[0]["spec"]["http"] if r["name"] == "canary")
    canary["mirror"] = {"host": canary["route"][1]["destination"]["host"], "subset": "v2"}
    canary["mirrorPercentage"] = {"value": 50.0}
    (tmp / "routes.yaml").write_text(yaml.safe_dump_all(docs))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CANARY_ROLLOUT_STATE", str(tmp / "rollout.json"))
        s = start_stack(tmp, "--routes", str(tmp / "routes.yaml"))
    try:
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Iterator[Traffic]:
    with Traffic(stack.url) as t:
        yield t


def sync_playwright() -> Any:
    """Playwright's sync API; a missing install skips here and fails in CI (require)."""
    require(importlib.util.find_spec("playwright") is not None, "playwright (Python)",
            "pip install -e '.[dev]'")
    from playwright.sync_api import sync_playwright as start

    return start()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, stack: Stack, traffic: Traffic) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: d.accept())
    yield pg
    pg.close()
    assert not errors, errors


def console_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.ports['--console-port']}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def routes_json(stack: Stack) -> dict[str, Any]:
    out = stack.cli("routes", "get", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _panels(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => Object.fromEntries(Object.entries(window.consoleState.panels)
        .map(([id, p]) => [id, {state: p.state, series: p.series,
          strokes: window.consoleState.charts[id] ? window.consoleState.charts[id].series
            .slice(1).map((s, i) => typeof s.stroke === "function" ?
              s.stroke(window.consoleState.charts[id], i + 1) : s.stroke) : [],
          xs: window.consoleState.charts[id] ? window.consoleState.charts[id].data[0].length : 0}]))
    """)


def test_every_panel_draws_v1_and_v2(page: Any, stack: Stack, traffic: Traffic) -> None:
    dashboard = json.loads((ROOT / "deploy/helm/vllm-canary/files/vllm-sre.json").read_text())
    drawn = {str(p["id"]): p for p in dashboard["panels"] if p["type"] == "timeseries"}
    native = {i for i, p in drawn.items() if "vllm:" in json.dumps(p["targets"])}
    assert len(native) == 4 and len(drawn) >= 15  # KV cache, running/waiting, queue, prefix
    page.goto(console_url(stack) + "/#dashboard")
    deadline = time.monotonic() + 45
    missing: dict[str, Any] = {}
    while time.monotonic() < deadline:
        panels = _panels(page)
        missing = {}
        for pid in drawn:
            got = panels.get(pid, {"state": "absent", "series": []})
            versions = {s["version"] for s in got["series"] if s["points"] >= 2}
            if pid in native:  # the sim engine has no vLLM engine metrics: "No data"
                if got["state"] != "nodata":
                    missing[pid] = got
            elif not {"v1", "v2"} <= versions:
                missing[pid] = got
        if not missing:
            break
        page.wait_for_timeout(1000)
    shot(page, "dashboard")
    assert not missing, missing
    took = time.monotonic() - traffic.started
    assert took < 30, f"curves took {took:.0f} s after the traffic began"
    print(f"every panel drew v1 and v2 {took:.1f} s after the traffic began")
    colours = page.evaluate("window.consoleState.cfg.colours")
    for pid in set(drawn) - native:
        p = panels[pid]
        drawn_series = [s for s in p["series"] if s["points"] > 0]
        assert p["strokes"] == [colours[s["version"]] for s in drawn_series], (pid, p)
    for pid in native:
        text = page.inner_text(f'.panel[data-panel-id="{pid}"] .nodata')
        assert text.startswith("No data"), text
    # Charts follow the window's width.
    wide = page.evaluate("window.consoleState.charts[2].width")
    page.set_viewport_size({"width": 1000, "height": 1000})
    page.wait_for_function(f"() => window.consoleState.charts[2].width < {wide}", timeout=5000)
    # $version honoured: only v1 ticked -> only v1 series.
    page.uncheck('#versions input[value="All"]')
    page.check('#versions input[value="v1"]')
    page.wait_for_function("""() => Object.entries(window.consoleState.panels)
        .every(([id, p]) => p.state !== "data" || p.series.every(s => s.version === "v1"))""",
                           timeout=15000)
    # The time range honoured: the x axis spans the chosen range.
    page.check('#versions input[value="All"]')
    page.select_option("#range", "now-5m")
    page.wait_for_function("""() => { const c = window.consoleState.charts[2];
        return c && c.data[0][c.data[0].length - 1] - c.data[0][0] <= 300; }""",
                           timeout=15000)


def _gateway_counts(stack: Stack) -> dict[str, float]:
    """Counts from the gateway's own /metrics by destination version; mirrored copies under
    `mirror-<version>`."""
    url = f"http://127.0.0.1:{stack.ports['--metrics-port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line:
            key = ""
        elif line.startswith("vllm_canary_gateway_mirror_requests_total{"):
            key = "mirror-"
        else:
            continue
        key += re.search(r'destination_version="([^"]*)"', line).group(1)  # type: ignore[union-attr]
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_topology_rates_agree_with_metrics(page: Any, stack: Stack) -> None:
    page.goto(console_url(stack) + "/#topology")
    page.wait_for_function("() => window.consoleState.topology !== null", timeout=15000)
    window = float(page.evaluate("window.consoleState.topology.window").rstrip("s"))
    c0, t0 = _gateway_counts(stack), time.monotonic()
    page.wait_for_timeout(window * 1000)
    c1, t1 = _gateway_counts(stack), time.monotonic()
    want = {v: (c1[v] - c0.get(v, 0.0)) / (t1 - t0) for v in ("v1", "v2", "mirror-v2")}
    page.wait_for_timeout(2500)  # the next refreshes read Prometheus' rate over that window
    topo = page.evaluate("window.consoleState.topology")
    shot(page, "topology")
    edges = {e["id"]: e for e in topo["edges"]}
    for v in ("v1", "v2"):
        got = edges[f"gateway-{v}"]["rps"]
        assert abs(got - want[v]) <= 0.25 * want[v] + 0.5, (v, got, want)
        assert edges[f"gateway-{v}"]["error_pct"] == pytest.approx(0.0, abs=1.0)
        assert edges[f"gateway-{v}"]["p95_ms"] > 0
    total, routed = edges["client-gateway"]["rps"], want["v1"] + want["v2"]
    assert abs(total - routed) <= 0.25 * routed + 0.5
    mirror = edges["mirror-canary-v2"]
    assert mirror["kind"] == "mirror" and mirror["percent"] == 50.0
    assert want["mirror-v2"] > 0
    assert abs(mirror["rps"] - want["mirror-v2"]) <= 0.25 * want["mirror-v2"] + 0.5
    weights = routes_json(stack)["weights"]
    assert {v: edges[f"gateway-{v}"]["weight"] for v in ("v1", "v2")} == weights
    nodes = {n["id"]: n for n in topo["nodes"]}
    assert nodes["v1"]["health"] == nodes["v2"]["health"] == "healthy"
    assert page.locator('#edges tr[data-edge-id="gateway-v2"]').count() == 1


def test_weights_and_abort_from_the_console(page: Any, stack: Stack) -> None:
    token = json.loads(stack.state_file.read_text())["admin_token"]
    page.goto(console_url(stack) + "/#routes")
    page.wait_for_selector('#weights-inputs input[name="v2"]', timeout=15000)
    page.fill('#weights-inputs input[name="v1"]', "70")
    page.fill('#weights-inputs input[name="v2"]', "30")
    page.click("#apply-weights")
    page.wait_for_function("() => document.querySelector('#weights-msg').textContent"
                           ".startsWith('applied')", timeout=15000)
    assert routes_json(stack)["weights"] == {"v1": 70, "v2": 30}
    page.wait_for_selector('#routes-table tr[data-route="canary"]')
    assert "v1 70" in page.inner_text('#routes-table tr[data-route="canary"]')
    # One named route (the admin API's ?route=), here the only weighted one.
    page.select_option("#weights-route", "canary")
    page.fill('#weights-inputs input[name="v1"]', "60")
    page.fill('#weights-inputs input[name="v2"]', "40")
    page.click("#apply-weights")
    page.wait_for_function("() => document.querySelector('#weights-msg').textContent"
                           ".includes('\"v1\":60')", timeout=15000)
    canary = next(r for r in routes_json(stack)["routes"] if r["name"] == "canary")
    assert canary["weights"] == {"v1": 60, "v2": 40}
    shot(page, "routes")
    assert token not in page.content()

    page.goto(console_url(stack) + "/#rollout")
    page.wait_for_selector("#abort")
    page.click("#abort")  # the confirm() dialog is accepted by the fixture
    page.wait_for_function("() => document.querySelector('#rollout-msg').textContent"
                           ".includes('abort')", timeout=15000)
    assert routes_json(stack)["weights"] == {"v1": 100, "v2": 0}
    # The weight-over-time chart gets the new weights at its next samples.
    page.wait_for_function("""() => window.consoleState.rollout.history
        .some(p => p.weights && p.weights.v2 === 0)""", timeout=15000)
    shot(page, "rollout")

    reports = Path(stack.log.parent) / "reports"
    latest = json.loads((reports / "20261201" / "decision.json").read_text())
    older = json.loads((reports / "20261130" / "decision.json").read_text())
    assert (latest["decision"], older["decision"]) == ("promote", "rollback")
    page.goto(console_url(stack) + "/#quality")
    page.wait_for_selector("#decision", timeout=15000)
    assert page.inner_text("#decision") == "promote"
    text = page.inner_text("#quality-latest")
    diff, (lo, hi) = latest["quality"]["score_diff"], latest["quality"]["score_diff_ci"]
    assert " ".join(format(float(f"{x:.2f}"), "g") for x in (diff, lo, hi)) in \
        text.replace("[", "").replace(",", "").replace("]", ""), text
    for reason in latest["reasons"]:
        assert reason in page.inner_text("#reasons")
    assert page.locator("#quality-history tr").count() == 3  # header + 2 days
    assert "rollback" in page.inner_text("#quality-history")
    href = page.get_attribute("#quality-latest a", "href")
    with urllib.request.urlopen(console_url(stack) + href, timeout=10) as resp:
        assert resp.read() == (reports / "20261201" / "report.html").read_bytes()
    shot(page, "quality")


ROLLOUT = """\
steps:
  - setWeight: 20
  - analysis: {duration: 120s}
  - setWeight: 100
analysis:
  metrics: [error-rate, latency-p95]
  alpha: 0.01
  interval: 1s
  minSamples: 100000
"""


def test_rollout_tab_follows_a_live_rollout_and_promotes(page: Any, stack: Stack,
                                                         tmp_path: Path) -> None:
    """A real `rollout start` on the stack: the tab shows its phase and step, the weight
    over time and each metric's evidence against its boundary; Promote goes through the
    controller (its request file), which puts all traffic on v2."""
    (tmp_path / "strategy.yaml").write_text(ROLLOUT)
    state = Path(stack.env["VLLM_CANARY_ROLLOUT_STATE"])  # the file the console reads
    proc = subprocess.Popen([CLI, "rollout", "start", "--strategy", str(tmp_path /
                             "strategy.yaml"), "--state", str(state)], env=stack.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page.goto(console_url(stack) + "/#rollout")
        page.wait_for_function("""() => { const r = window.consoleState.rollout;
            return r && r.rollout && r.rollout.phase === "Analyzing" &&
              Object.keys(r.rollout.evidence).length === 2 &&
              r.history.filter(p => p.evidence && p.evidence["error-rate"]).length >= 3; }""",
                               timeout=30000)
        assert page.inner_text("#phase") == "Analyzing"
        assert page.inner_text("#step") == "2/3"
        ro = page.evaluate("window.consoleState.rollout.rollout")
        for metric in ("error-rate", "latency-p95"):
            ev = ro["evidence"][metric]
            # Bonferroni over the two metrics: each test rejects at log(1 / (0.01 / 2)).
            assert ev["boundary"] == pytest.approx(math.log(2 / 0.01), abs=1e-3)
            assert ev["requests_canary"] > 0
            assert page.locator(f'#evidence-charts [data-metric="{metric}"] canvas').count()
        assert routes_json(stack)["weights"] == {"v1": 80, "v2": 20}
        shot(page, "rollout-live")
        page.click("#promote")
        page.wait_for_function("() => document.querySelector('#rollout-msg').textContent"
                               ".includes('controller')", timeout=15000)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert routes_json(stack)["weights"] == {"v1": 0, "v2": 100}
        page.wait_for_function("() => window.consoleState.rollout.rollout.phase === "
                               "'Promoted'", timeout=15000)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cross_site_mutations_are_refused(stack: Stack) -> None:
    """A page on another origin cannot change weights: no custom header without a CORS
    preflight (never granted), and Origin / Sec-Fetch-Site are checked."""
    url = console_url(stack) + "/api/weights"
    body = json.dumps({"weights": {"v1": 50, "v2": 50}}).encode()
    for headers in ({"Content-Type": "application/json", "Origin": "http://evil.example"},
                    {"Content-Type": "application/json", "X-Console-Request": "1",
                     "Sec-Fetch-Site": "cross-site"},
                    {"Content-Type": "text/plain"}):
        req = urllib.request.Request(url, body, headers, method="PUT")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 403, headers
    assert routes_json(stack)["weights"] != {"v1": 50, "v2": 50}


def test_console_command_finds_the_local_stack(stack: Stack, traffic: Traffic,
                                               tmp_path: Path) -> None:
    """`vllm-canary console` with no flags reads the running stack's Prometheus and admin API
    (its token from the stack's state file, never on the command line)."""
    port = free_ports(1)[0]
    proc = procs.start([CLI, "console", "--port", str(port)], env=stack.env,
                       log=tmp_path / "console.log")
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/api/routes", timeout=10) as resp:
            assert json.load(resp)["weights"] == routes_json(stack)["weights"]
        deadline, got = time.monotonic() + 40, set()
        while time.monotonic() < deadline and not got >= {"v1", "v2"}:
            time.sleep(1)  # a 15 s step: the first points need a sample on the grid
            with urllib.request.urlopen(base + "/api/panels/2?from=now-5m", timeout=10) as r:
                panel = json.load(r)
            got = {s["version"] for s in panel["series"] if s["points"]}
        assert got >= {"v1", "v2"}, panel
        assert "[60s]" in panel["queries"][0]["expr"]  # default 15 s scrape: Grafana's 1m
    finally:
        procs.stop(proc)
    assert "console on http://127.0.0.1:" in (tmp_path / "console.log").read_text()
