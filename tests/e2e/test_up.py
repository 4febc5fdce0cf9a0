"""`vllm-canary up` as a user runs it: the seed's 20-request check, the header route, the
routes/status commands, Istio PromQL on the stack's Prometheus, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from vllm_canary import promserver, stackstate

CLI = str(Path(sys.executable).with_name("vllm-canary"))
SEED_BODY = b'{"prompt":"hello","max_tokens":5}'
PORT_FLAGS = ("--v1-port", "--v1-metrics-port", "--v2-port", "--v2-metrics-port", "--port",
              "--metrics-port", "--admin-port", "--prometheus-port", "--console-port")


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    env: dict[str, str]
    log: Path
    state_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--port']}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], env=self.env, capture_output=True, text=True,
                              timeout=60)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_stack(tmp: Path, *extra: str) -> Stack:
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    state_file = tmp / "state.json"
    env = {**os.environ, "VLLM_CANARY_STATE": str(state_file)}
    argv = [CLI, "up", "--log-dir", str(tmp / "logs"), "--seed", "3", *extra]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    log = tmp / "up.out"
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(proc, ports, env, log, state_file)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"up exited {proc.returncode}:\n{log.read_text()}")
        if state_file.exists() and "Ctrl-C" in log.read_text():
            return stack
        time.sleep(0.2)
    stop_stack(stack)
    raise AssertionError(f"up not ready in 90 s:\n{log.read_text()}")


def stop_stack(stack: Stack) -> int | None:
    if stack.proc.poll() is None:
        os.kill(stack.proc.pid, signal.SIGTERM)
        try:
            return stack.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            return stack.proc.wait(5)
    return stack.proc.returncode


def completion(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
    """What the seed's curl does: POST without a content-type header."""
    req = urllib.request.Request(url + "/v1/completions", data=SEED_BODY, headers=headers or {})
    req.remove_header("Content-type")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["x-model-version"], json.load(resp)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {exc.read()[:300]!r}") from None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("up"))
    yield s
    stop_stack(s)


def test_seed_twenty_requests(stack: Stack) -> None:
    results = [completion(stack.url) for _ in range(20)]
    assert all(code == 200 for code, _, _ in results)
    assert {v for _, v, _ in results} <= {"v1", "v2"}
    assert all(body["text"] == body["choices"][0]["text"] for _, _, body in results)


def test_split_is_about_ninety_ten(stack: Stack) -> None:
    with ThreadPoolExecutor(16) as pool:
        versions = Counter(v for _, v, _ in pool.map(lambda _: completion(stack.url),
                                                     range(400)))
    assert 16 <= versions["v2"] <= 72, versions  # 10% of 400 = 40, +-4 standard deviations


def test_header_route_is_always_v2(stack: Stack) -> None:
    assert {completion(stack.url, {"x-ab-test": "v2"})[1] for _ in range(20)} == {"v2"}


def test_routes_and_status_commands(stack: Stack) -> None:
    out = stack.cli("routes", "get")
    assert out.returncode == 0 and "v1=90  v2=10" in out.stdout
    out = stack.cli("routes", "set-weight", "v1=0", "v2=100")
    assert out.returncode == 0 and "v1=0  v2=100" in out.stdout
    try:
        assert {completion(stack.url)[1] for _ in range(10)} == {"v2"}
    finally:
        assert stack.cli("routes", "set-weight", "v1=90", "v2=10").returncode == 0
    # Weights are relative, as in Istio >= 1.15 (istio/istio#36069): 1:3 is 25/75.
    out = stack.cli("routes", "set-weight", "v1=1", "v2=3")
    assert out.returncode == 0 and "v1=25  v2=75" in out.stdout, out.stdout + out.stderr
    assert stack.cli("routes", "set-weight", "v1=90", "v2=10").returncode == 0
    bad = stack.cli("routes", "set-weight", "v1=0", "v2=0")  # Istio refuses a total of 0
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "weight = 0" in bad.stderr
    out = stack.cli("status", "--no-prometheus", "--window", "1")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert rows["v1"][1] == "90" and rows["v2"][1] == "10"


def test_istio_promql_on_the_stacks_prometheus(stack: Stack) -> None:
    require(promserver.find_binary() is not None, "Prometheus", promserver.INSTALL_HINT)
    state = stackstate.load(stack.state_file)
    assert state is not None and state.prometheus_url
    query = ('sum by (destination_version) (rate(istio_requests_total{reporter="destination",'
             'destination_service_name="vllm-service"}[1m]))')
    found: dict[str, float] = {}
    for _ in range(40):  # bounded: ~30 s
        for _ in range(5):
            completion(stack.url)
        completion(stack.url, {"x-ab-test": "v2"})
        found = {r["metric"]["destination_version"]: float(r["value"][1])
                 for r in promserver.query(state.prometheus_url, query)}
        if found.get("v1", 0) > 0 and found.get("v2", 0) > 0:
            break
        time.sleep(0.5)
    assert found.get("v1", 0) > 0 and found.get("v2", 0) > 0, found


def test_sigterm_stops_everything(tmp_path: Path) -> None:
    s = start_stack(tmp_path, "--no-prometheus")
    assert stop_stack(s) == 0
    assert not s.state_file.exists()
    for flag in ("--v1-port", "--v2-port", "--port", "--admin-port"):
        assert not listening(s.ports[flag]), flag


def test_a_dying_child_is_reported(tmp_path: Path) -> None:
    s = start_stack(tmp_path, "--no-prometheus")
    try:
        port = str(s.ports["--v2-port"])
        victim = next(int(p.name) for p in Path("/proc").iterdir()
                      if p.name.isdigit() and {"serve", port} <= set(_cmdline(p)))
        os.kill(victim, signal.SIGKILL)
        assert s.proc.wait(30) == 1
        out = s.log.read_text()
        assert f"v2 server (pid {victim}) exited" in out
        assert not listening(s.ports["--port"])
    finally:
        stop_stack(s)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(p: Path) -> list[str]:
    try:
        return p.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run([CLI, "up", "--port", str(port), "--log-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "VLLM_CANARY_STATE": str(tmp_path / "s.json")})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and f"--port {port}" in out.stderr


def test_flag_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    env = {**os.environ, "VLLM_CANARY_STATE": str(tmp_path / "s.json")}

    def up(*args: str) -> subprocess.CompletedProcess[str]:
        ports = [a for flag, port in zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True)
                 for a in (flag, str(port)) if flag not in args]
        return subprocess.run([CLI, "up", "--no-prometheus", "--log-dir", str(tmp_path), *ports,
                               *args], capture_output=True, text=True, timeout=60, env=env)

    out = up("--port", "70000")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not a TCP port: --port 70000" in out.stderr
    (tmp_path / "afile").touch()
    for args, words in ((("--log-dir", str(tmp_path / "afile")), "cannot create"),
                        (("--host", "10.255.255.1"), "cannot listen on this address")):
        out = up(*args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().count("\n") == 0 and words in out.stderr
    for args, words in ((("--v2-error-rate", "2"), "--v2-error-rate 2: give a fraction"),
                        (("--v2-latency-factor", "0"), "--v2-latency-factor 0: give a factor")):
        out = up(*args)  # refused before anything starts, in the flag's own name
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
        assert words in out.stderr


def test_a_background_stack_stops_on_sigint(tmp_path: Path) -> None:
    """`make up &` from a script starts `up` with SIGINT ignored (POSIX shells do that for
    background jobs); `kill -INT` must stop it like Ctrl-C, not leave it running."""
    state = tmp_path / "s.json"
    ports = [a for flag, port in zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True)
             for a in (flag, str(port))]
    proc = subprocess.Popen(
        [CLI, "up", "--no-prometheus", "--no-console", "--log-dir", str(tmp_path), *ports],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "VLLM_CANARY_STATE": str(state)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for _ in range(600):  # bounded: ~60 s for the stack to be up
            if state.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert state.exists() and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
