"""The data loop against real `vllm-canary serve` processes (sim engine): traffic → request
logs → `sample` (idempotent, resumable after a kill, failures recorded) → `loop daily` with a
real Label Studio → annotate → pull → `evaluate`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.labelstudio import LabelStudio
from tests.fixtures.server import RunningServer, StartServer
from vllm_canary import procs

pytestmark = pytest.mark.real
CLI = str(Path(sys.executable).with_name("vllm-canary"))
TODAY = dt.datetime.now(dt.UTC).date()


def post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    req = urllib.request.Request(url + path, json.dumps(body).encode(),
                                 {"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def traffic(servers: list[RunningServer], n: int) -> None:
    """What users send: completions and chats, repeats with other spacing, opted-out calls."""
    for i in range(n):
        url = servers[i % len(servers)].url
        if i % 3 == 0:
            post(url, "/v1/chat/completions", {"messages": [
                {"role": "user", "content": f"Chat question {i}"}], "max_tokens": 8})
        else:
            post(url, "/v1/completions", {"prompt": f"Prompt  number {i}", "max_tokens": 8})
        post(url, "/v1/completions", {"prompt": f"prompt number {i}", "max_tokens": 8})
        post(url, "/v1/completions", {"prompt": f"private {i}", "max_tokens": 4}, {"x-no-log": "1"})
    time.sleep(0.5)  # the request log is written by a background thread


def sample(servers: list[RunningServer], out: Path, n: int, *extra: str,
           v2: RunningServer | None = None) -> subprocess.CompletedProcess[str]:
    argv = [CLI, "sample", "--logs", *(str(s.log_dir) for s in servers), "--n", str(n),
            "--date", TODAY.isoformat(), "--v1", servers[0].url,
            "--v2", (v2 or servers[1]).url, "--out", str(out), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def items_of(out: Path) -> list[dict[str, Any]]:
    path = out / f"samples_{TODAY:%Y%m%d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pair(serve_process: StartServer) -> list[RunningServer]:
    servers = [serve_process("v1"), serve_process("v2")]
    traffic(servers, 40)
    return servers


def test_sample_answers_from_both_versions_and_is_idempotent(
    pair: list[RunningServer], tmp_path: Path,
) -> None:
    out = tmp_path / "annotations"
    first = sample(pair, out, 25)
    assert first.returncode == 0, first.stderr
    assert "25 items, 25 asked now, 0 failed answers" in first.stdout
    assert "opted_out 40" in first.stderr  # the x-no-log calls are never sampled
    items = items_of(out)
    assert len({i["id"] for i in items}) == 25
    assert not any("private" in json.dumps(i) for i in items)
    for item in items:
        assert set(item["answers"]) == {"v1", "v2"}
        assert all(a["error"] is None and a["text"] for a in item["answers"].values())
    assert {i["endpoint"] for i in items} == {"/v1/completions", "/v1/chat/completions"}
    before = (out / f"samples_{TODAY:%Y%m%d}.jsonl").read_bytes()
    again = sample(pair, out, 25)
    assert "25 items, 0 asked now" in again.stdout
    assert (out / f"samples_{TODAY:%Y%m%d}.jsonl").read_bytes() == before
    more = sample(pair, out, 30)
    assert "30 items, 5 asked now" in more.stdout
    assert [i["id"] for i in items_of(out)][:25] == [i["id"] for i in items]


def test_killed_mid_run_then_rerun_loses_and_doubles_nothing(
    serve_process: StartServer, tmp_path: Path,
) -> None:
    slow = [serve_process("v1", "--latency-factor", "1.5"),
            serve_process("v2", "--latency-factor", "1.5")]
    traffic(slow, 30)
    out = tmp_path / "killed"
    journal = out / f"samples_{TODAY:%Y%m%d}.jsonl.partial"
    argv = [CLI, "sample", "--logs", *(str(s.log_dir) for s in slow), "--n", "30",
            "--date", TODAY.isoformat(), "--v1", slow[0].url, "--v2", slow[1].url,
            "--out", str(out), "--concurrency", "1"]
    proc = procs.start(argv, log=tmp_path / "killed.log")
    for _ in range(600):  # bounded: up to 60 s for three finished items
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not (out / f"samples_{TODAY:%Y%m%d}.jsonl").exists()
    done_before = len(journal.read_text().splitlines())
    assert 3 <= done_before < 30

    resumed = sample(slow, out, 30, "--concurrency", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert f"30 items, {30 - done_before} asked now" in resumed.stdout
    assert not journal.exists()
    fresh = sample(slow, tmp_path / "fresh", 30, "--concurrency", "4")
    assert fresh.returncode == 0
    got, want = items_of(out), items_of(tmp_path / "fresh")
    assert [i["id"] for i in got] == [i["id"] for i in want]
    assert len({i["id"] for i in got}) == 30
    strip = lambda it: {v: a["text"] for v, a in it["answers"].items()}  # noqa: E731
    assert [strip(i) for i in got] == [strip(i) for i in want]


def test_failed_answers_are_recorded_not_fatal(
    pair: list[RunningServer], serve_process: StartServer, tmp_path: Path,
) -> None:
    broken = serve_process("v2", "--error-rate", "1.0")
    result = sample(pair, tmp_path / "out", 5, "--retries", "1", v2=broken)
    assert result.returncode == 0, result.stderr
    assert "5 items, 5 asked now, 5 failed answers" in result.stdout
    for item in items_of(tmp_path / "out"):
        assert item["answers"]["v1"]["error"] is None
        assert item["answers"]["v2"]["error"].startswith("HTTP 5")
        assert item["answers"]["v2"]["attempts"] == 2
    # Once v2 is healthy again, a re-run asks only the failed answers again.
    healed = sample(pair, tmp_path / "out", 5)
    assert "5 items, 5 asked now, 0 failed answers" in healed.stdout


def test_daily_loop_with_label_studio_then_evaluate(
    pair: list[RunningServer], label_studio: LabelStudio, tmp_path: Path,
) -> None:
    env = {**os.environ, "VLLM_CANARY_V1": pair[0].url, "VLLM_CANARY_V2": pair[1].url,
           "VLLM_CANARY_LABELSTUDIO_URL": label_studio.url,
           "VLLM_CANARY_LABELSTUDIO_TOKEN": label_studio.token}
    settings = tmp_path / "daily.yaml"
    settings.write_text(f"logs: [{pair[0].log_dir}, {pair[1].log_dir}]\nn: 30\nmode: pairwise\n"
                        f"out: {tmp_path / 'annotations'}\n")
    argv = [CLI, "loop", "daily", "--config", str(settings), "--date", TODAY.isoformat()]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "30 tasks imported, 0 already there" in run.stdout
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert "0 tasks imported, 30 already there" in rerun.stdout
    project = int(run.stdout.split("Label Studio project ")[1].split(":")[0])

    from label_studio_sdk import LabelStudio as SDK

    sdk = SDK(base_url=label_studio.url, api_key=label_studio.token)
    for i, task in enumerate(sdk.tasks.list(project=project, fields="all")):
        meta = task.data["meta"]
        prefer = "v1" if i % 10 == 0 else "v2"
        sdk.annotations.create(id=task.id, result=[{
            "from_name": "pw", "to_name": "pw", "type": "pairwise",
            "value": {"selected": "left" if meta["left"] == prefer else "right"}}])
    labels = tmp_path / "labels.json"
    pull = subprocess.run([CLI, "labelstudio", "pull", "--project", str(project),
                           "--out", str(labels)], capture_output=True, text=True, env=env)
    assert pull.returncode == 0, pull.stderr
    samples = tmp_path / "annotations" / f"samples_{TODAY:%Y%m%d}.jsonl"
    report = tmp_path / "reports" / f"{TODAY:%Y%m%d}"
    ev = subprocess.run([CLI, "evaluate", "--samples", str(samples), "--labels", str(labels),
                         "--out", str(report), "--latency-budget", "1.0"],
                        capture_output=True, text=True)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "decision: promote" in ev.stdout
    assert {p.name for p in report.iterdir()} == {"report.csv", "decision.json", "report.html"}


def test_daily_loop_without_versions_is_a_config_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_CANARY_")}
    run = subprocess.run([CLI, "loop", "daily", "--logs", str(tmp_path)], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("vllm-canary loop: error: loop daily needs the URLs")


def test_prometheus_join_reads_each_versions_day_metrics(
    serve_process: StartServer, tmp_path: Path,
) -> None:
    from tests.conftest import require
    from vllm_canary.dataloop import metricsjoin
    from vllm_canary.promserver import INSTALL_HINT, PrometheusServer, ScrapeJob, find_binary

    require(find_binary() is not None, "Prometheus", INSTALL_HINT)
    v1 = serve_process("v1")
    v2 = serve_process("v2", "--error-rate", "0.5", "--seed", "3")
    targets = [u.metrics_url.split("//")[1].split("/")[0] for u in (v1, v2)]
    with PrometheusServer(tmp_path / "prom", [ScrapeJob("vllm", targets)]) as prom:
        for _ in range(300):  # bounded: both targets scraped once before the traffic
            up = prom.query("up")
            if len(up) == 2 and all(s["value"][1] == "1" for s in up):
                break
            time.sleep(0.1)
        for i in range(40):
            for server in (v1, v2):
                with contextlib.suppress(urllib.error.HTTPError):
                    post(server.url, "/v1/completions", {"prompt": f"p {i}", "max_tokens": 8})
        time.sleep(3)  # two more scrapes
        got = metricsjoin.from_prometheus(prom.url, TODAY, ["v1", "v2"])
        samples = tmp_path / "samples.jsonl"
        samples.write_text(json.dumps({"id": "s1", "day": TODAY.isoformat(), "prompt": "p",
                                       "endpoint": "/v1/completions", "answers": {}}) + "\n")
        (tmp_path / "labels.json").write_text("[]")
        ev = subprocess.run([CLI, "evaluate", "--samples", str(samples), "--labels",
                             str(tmp_path / "labels.json"), "--out", str(tmp_path / "r"),
                             "--prometheus", prom.url], capture_output=True, text=True)
    assert ev.returncode == 4, ev.stdout + ev.stderr  # v2 fails half its requests
    doc = json.loads((tmp_path / "r" / "decision.json").read_text())
    assert doc["metrics"]["v2"]["source"] == "prometheus"
    assert any(r.startswith("error rate v2") for r in doc["reasons"])
    assert got["v1"].source == "prometheus"
    assert 0 < got["v1"].p95_latency_s < 10 and got["v1"].error_rate == 0
    assert 0.2 < got["v2"].error_rate < 0.8
    assert got["v1"].tokens_per_s > 0
