"""Dark launch as a user runs it: `up --mirror-v2 100` with all traffic on v1 gives clients
only v1's answers, v2's front logs a shadow answer for every logged request id (and counts it
apart from served traffic), and `shadow report` counts the pairs; a slow v2 in shadow delays no
client, and the mirrors it cannot take are dropped and counted."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.gateway import TOKEN, FakeUpstream, StartGateway
from tests.fixtures.labelstudio import LabelStudio
from tests.fixtures.rollout import cli
from tests.integration.test_actuator_kubernetes import FakeApiServer, api_server  # noqa: F401
from tests.integration.test_actuator_kubernetes import actuator as k8s_actuator
from vllm_canary.cli import main
from vllm_canary.dataloop.logs import ReadStats, read_records
from vllm_canary.gateway.adminclient import AdminClient
from vllm_canary.rollout.metrics.scrape import scrape

N = 20


def _post(url: str, prompt: str) -> tuple[str, dict]:
    """One completion through the gateway. A 503 (the shared CI machine starving the stack's
    health checks) is retried twice, as a client would; its answer would be v1's anyway."""
    body = json.dumps({"prompt": prompt, "max_tokens": 8}).encode()
    for attempt in range(3):
        try:
            with urllib.request.urlopen(
                    urllib.request.Request(url + "/v1/completions", data=body),
                    timeout=10) as resp:
                return resp.headers["x-model-version"], json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 2:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _records(log_dir: Path) -> list[dict]:
    files = sorted(log_dir.glob("requests-*.jsonl"))
    return list(read_records(files, ReadStats()))


def _wait_for_pairs(log_dir: Path, n: int) -> tuple[set[str], dict[str, dict], list[dict]]:
    """Served v1 request ids, v2's shadow records by id, and all records, once every served
    id has its shadow line (mirrors are fire and forget: they land a bit later)."""
    deadline = time.monotonic() + 20
    while True:
        recs = _records(log_dir)
        served = {r["request_id"] for r in recs if r["version"] == "v1" and not r.get("shadow")}
        shadow = {r["request_id"]: r for r in recs if r["version"] == "v2" and r.get("shadow")}
        if (len(served) == n and served <= set(shadow)) or time.monotonic() > deadline:
            return served, shadow, recs
        time.sleep(0.2)


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_up_mirror_v2_shadow_log_metrics_and_report(up_factory, tmp_path: Path) -> None:
    env, st = up_factory("--mirror-v2", "100", "--no-prometheus", "--no-console")
    AdminClient(st.admin_url, st.admin_token).set_weights({"v1": 100, "v2": 0})
    versions = [_post(st.gateway_url, f"question number {i}")[0] for i in range(N)]
    assert versions == ["v1"] * N  # every client answer is v1's
    log_dir = tmp_path / "logs"
    served, shadow, recs = _wait_for_pairs(log_dir, N)
    assert len(served) == N and served <= set(shadow), (len(served), len(shadow))
    assert all(shadow[rid]["completion"] and shadow[rid]["status"] == 200 for rid in served)
    assert not [r for r in recs if r["version"] == "v2" and not r.get("shadow")]

    v2 = scrape(st.servers["v2"].metrics_url)
    assert _value(v2, "vllm_shadow_requests_total", status="200") == N
    assert _value(v2, "vllm_requests_total") == 0  # served series: users' experience only
    gw = scrape(st.gateway_metrics_url)
    assert _value(gw, "istio_requests_total", destination_version="v2") == 0

    out = tmp_path / "report"
    run = subprocess.run(cli("shadow", "report", "--logs", str(log_dir), "--out", str(out)),
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs"], summary["unpaired"]) == (N, 0)
    assert summary["candidate_error_rate"]["rate"] == 0.0
    assert (out / "report.html").is_file() and len((out / "pairs.csv").read_text().splitlines()) \
        == N + 1

    off = subprocess.run(cli("shadow", "mirror", "0"), capture_output=True, text=True, env=env,
                         timeout=30)
    assert off.returncode == 0 and off.stdout.startswith("no mirror"), off.stderr
    routes = AdminClient(st.admin_url, st.admin_token).routes()["virtualservices"]
    assert not any("mirror" in http for vs in routes for http in vs["spec"]["http"])


async def _latencies(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/completions", data=b'{"prompt":"x"}') as resp:
                await resp.read()
                assert resp.headers["x-model-version"] == "v1"
            out.append(time.perf_counter() - t0)
    return out


async def test_slow_shadow_delays_no_client_and_drops_are_counted(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(max_mirrors_in_flight=3)
    admin = gw.url("admin")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.put(admin + "/weights", json={"weights": {"v1": 100, "v2": 0}}) as r:
            assert r.status == 200
        before = await _latencies(gw.url(), 30)
        upstreams["v2"].delay = 2.0  # v2 is slow while shadowed
        async with s.put(admin + "/mirror", json={"subset": "v2", "percent": 100}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["mirror"] == {"subset": "v2", "percent": 100.0}
        during = await _latencies(gw.url(), 30)
        async with s.put(admin + "/mirror", json={"subset": "v2", "percent": 101}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "percent"
    # Fire and forget: the client's median latency on v1 is unchanged within noise (a slow
    # mirror awaited inline would add 2 s to each).
    assert statistics.median(during) < statistics.median(before) + 0.05, (before, during)
    assert max(during) < 1.0
    dropped = sum(s.value for m in gw.registry.collect() for s in m.samples
                  if s.name == "vllm_canary_gateway_mirror_dropped_total"
                  and s.labels.get("destination_version") == "v2")
    assert dropped == 30 - 3  # three copies in flight at most; the rest dropped and counted
    assert len(upstreams["v2"].requests) == 3
    await asyncio.sleep(0)


@pytest.mark.real
def test_real_shadow_pairs_through_label_studio_to_a_decision(
        up_factory, label_studio: LabelStudio, tmp_path: Path, capsys) -> None:
    _, st = up_factory("--mirror-v2", "100", "--no-prometheus", "--no-console")
    AdminClient(st.admin_url, st.admin_token).set_weights({"v1": 100, "v2": 0})
    for i in range(25):
        _post(st.gateway_url, f"explain idea {i} in one line")
    served, _, _ = _wait_for_pairs(tmp_path / "logs", 25)
    ann = tmp_path / "annotations"
    assert main(["sample", "--from-shadow", "--logs", str(tmp_path / "logs"), "--n", "22",
                 "--out", str(ann)]) == 0
    samples = next(ann.glob("samples_*.jsonl"))
    items = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(items) == 22 and all(i["source"]["request_id"] in served for i in items)
    assert all(i["source"]["kind"] == "shadow" and i["answers"]["v2"]["text"] for i in items)

    capsys.readouterr()
    assert main(["labelstudio", "push", "--samples", str(samples), "--mode", "pairwise",
                 "--url", label_studio.url, "--token", label_studio.token,
                 "--title", "dark launch pairs"]) == 0
    pid = int(capsys.readouterr().out.split()[1])
    from label_studio_sdk import LabelStudio as SDK

    sdk = SDK(base_url=label_studio.url, api_key=label_studio.token)
    tasks = list(sdk.tasks.list(project=pid, fields="all"))
    assert len(tasks) == 22
    for i, task in enumerate(tasks):  # a person prefers v1's answer 7 times in 8
        prefer = "v2" if i % 8 == 0 else "v1"
        side = "left" if task.data["meta"]["left"] == prefer else "right"
        sdk.annotations.create(id=task.id, result=[{"from_name": "pw", "to_name": "pw",
                                                    "type": "pairwise",
                                                    "value": {"selected": side}}])
    labels = tmp_path / "labels.json"
    assert main(["labelstudio", "pull", "--url", label_studio.url, "--token",
                 label_studio.token, "--project", str(pid), "--out", str(labels)]) == 0
    report = tmp_path / "report"
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(report)])
    doc = json.loads((report / "decision.json").read_text())
    assert (code, doc["decision"]) == (4, "rollback")  # v2 clearly worse on real prompts
    assert doc["provenance"] == {"shadow": 22}
    assert "v2 answered in shadow" in (report / "report.html").read_text()


def test_relay_front_marks_a_mirror_as_shadow(serve_process) -> None:
    """`serve --engine upstream|vllm` (the byte relay): a copy with Envoy's `-shadow` Host is
    logged with shadow: true and counted in vllm_shadow_* only, the served one as usual."""
    upstream = serve_process("v2")
    front = serve_process("v2", "--upstream", upstream.url, engine="upstream")
    body = json.dumps({"prompt": "same question", "max_tokens": 6}).encode()
    answers = []
    for host, rid in ((f"vllm-service-shadow:{front.port}", "rid-1"), (None, "rid-2")):
        headers = {"x-request-id": rid, "content-type": "application/json"}
        if host:
            headers["Host"] = host
        req = urllib.request.Request(front.url + "/v1/completions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            answers.append(json.load(resp)["choices"][0]["text"])
    assert answers[0] == answers[1] != ""
    samples = scrape(front.metrics_url)
    assert _value(samples, "vllm_shadow_requests_total", status="200") == 1
    assert _value(samples, "vllm_requests_total", status="200") == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        by_id = {r["request_id"]: r for r in _records(front.log_dir)}
        if {"rid-1", "rid-2"} <= set(by_id):
            break
        time.sleep(0.1)
    assert by_id["rid-1"].get("shadow") is True and by_id["rid-1"]["completion"] == answers[0]
    assert "shadow" not in by_id["rid-2"]


def test_kubernetes_actuator_sets_and_removes_the_mirror(
        api_server: FakeApiServer) -> None:  # noqa: F811 - the imported fixture
    act = k8s_actuator(api_server)
    assert act.set_mirror(25, "v2") == 25.0
    http = api_server.vs["spec"]["http"]
    assert http[1]["mirror"] == {"host": "vllm-service.default.svc.cluster.local",
                                 "subset": "v2"}
    assert http[1]["mirrorPercentage"] == {"value": 25.0}
    assert "mirror" not in http[0]  # the x-ab-test route is left alone
    assert act.get_weights() == {"v1": 90, "v2": 10}  # weights untouched
    assert act.set_mirror(0, "v2") == 0.0
    assert not any(k.startswith("mirror") for k in api_server.vs["spec"]["http"][1])
    assert [p[1]["metadata"]["resourceVersion"] for p in api_server.patches] == ["100", "101"]
