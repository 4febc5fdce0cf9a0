"""The Istio semantics table (docs/istio-semantics.yaml) against a real `vllm-canary gateway`
process: one test per row, the same rows as the pure-router run. One process serves every
accepted row (each row's routes sit behind a header `x-case: <row id>`). Requests go out as raw
HTTP/1.1 bytes, so paths reach the gateway exactly as written, to two loopback upstreams that
record the raw path they get. A row Istio refuses is written to the routes file and reloaded
through the admin API, which must answer 422 naming the field and keep the previous table."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.istio_table import (
    HOST,
    all_rows_yaml,
    http_of,
    refuse_rows,
    request_rows,
    routes_yaml,
    within,
)
from vllm_canary.procs import free_port

CLI = str(Path(sys.executable).with_name("vllm-canary"))
TOKEN = "conformance-token"
ENV = {**os.environ, "VLLM_CANARY_ADMIN_TOKEN": TOKEN}


@dataclass
class Upstream:
    """One version's pods: answers 200 with x-model-version, or 503 to the next `fail`
    requests; records (x-case, raw path, host) of every request."""

    version: str
    fail: int = 0
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    url: str = ""

    async def _any(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.headers.get("x-case", ""), request.raw_path,
                          request.headers.get("host", "")))
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": {"message": "induced"}}, status=503)
        return web.json_response({"text": self.version},
                                 headers={"x-model-version": self.version})

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.json_response({"ok": True}))
        app.router.add_route("*", "/{tail:.*}", self._any)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return runner

    def count(self, case: str, shadow: bool = False) -> int:
        return sum(c == case and h.endswith("-shadow") == shadow for c, _, h in list(self.seen))


@dataclass
class Stack:
    port: int
    admin: str
    routes: Path
    ups: dict[str, Upstream]

    def send(self, case: str, target: str = "/v1/completions",
             headers: list[list[str]] | None = None) -> tuple[int, dict[str, str], float]:
        """One request as raw bytes on a new connection: (status, headers, seconds)."""
        body = b'{"prompt":"hello","max_tokens":5}'
        lines = [f"POST {target} HTTP/1.1", f"host: {HOST}", f"x-case: {case}",
                 *(f"{k}: {v}" for k, v in headers or []), f"content-length: {len(body)}",
                 "connection: close"]
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        found = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:])}
        return int(head[0].split()[1]), found, time.monotonic() - started

    def admin_call(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.admin + path, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("conformance")
    loop = asyncio.new_event_loop()
    ups = {v: Upstream(v) for v in ("v1", "v2")}
    runners = [loop.run_until_complete(u.start()) for u in ups.values()]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    routes = tmp / "routes.yaml"
    routes.write_text(all_rows_yaml())
    port, admin_port = free_port(), free_port()
    log = tmp / "gateway.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [CLI, "gateway", "--routes", str(routes), "--port", str(port), "--metrics-port",
             str(free_port()), "--admin-port", str(admin_port), "--seed", "3",
             "--watch-interval", "3600", "--health-interval", "0.5",
             *(a for v, u in ups.items() for a in ("--upstream", f"{v}={u.url}"))],
            env=ENV | {"VLLM_CANARY_STATE": str(tmp / "none.json")},
            stdout=subprocess.DEVNULL, stderr=err)
    s = Stack(port, f"http://127.0.0.1:{admin_port}", routes, ups)
    try:
        for _ in range(150):  # bounded: 15 s
            assert proc.poll() is None, log.read_text()
            try:
                if s.admin_call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the gateway process did not start: " + log.read_text())
        yield s
    finally:
        proc.terminate()
        proc.wait(10)
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("row", request_rows(), ids=[r["id"] for r in request_rows()])
def test_accepted_row_as_envoy_executes_it(stack: Stack, row: dict[str, Any]) -> None:
    case, n = row["id"], int(row.get("n", 1))
    for item in row.get("requests", []):
        spec = item["send"]
        for _ in range(n if "to" in item else 1):
            status, headers, _ = stack.send(case, spec.get("path", "/v1/completions"),
                                            spec.get("headers"))
            if item.get("bad_request"):
                assert status == 400
            elif item.get("no_route"):
                assert status == 404
            else:
                assert (status, headers.get("x-model-version")) == (200, item["to"]), spec
        if "upstream_path" in item:
            last = [p for c, p, _ in stack.ups[item["to"]].seen if c == case][-1]
            assert last.partition("?")[0] == item["upstream_path"]
    answers = []
    if any(k in row for k in ("shares", "aborts", "delays", "mirrored")):
        answers = [stack.send(case) for _ in range(n)]
    if "shares" in row:
        counts = Counter(h.get("x-model-version") for _, h, _ in answers)
        for subset, pct in row["shares"].items():
            assert within(counts[subset], n, pct), counts
    if "aborts" in row:
        aborted = [s for s, _, _ in answers if s != 200]
        assert len(aborted) == row["aborts"]
        assert set(aborted) <= {row.get("abort_status", 503)}
    if "delays" in row:
        floor = row.get("delay_s", 1.0)
        assert sum(t >= floor for _, _, t in answers) == row["delays"]
    if "mirrored" in row:
        v2 = stack.ups["v2"]
        for _ in range(60):  # mirrors are fire-and-forget: wait for them, bounded (3 s)
            if v2.count(case, shadow=True) >= row["mirrored"]:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        assert v2.count(case, shadow=True) == row["mirrored"]
    if "fails" in row:
        for subset, k in row["fails"].items():
            stack.ups[subset].fail = k
        try:
            status, _, _ = stack.send(case)
        finally:
            for subset in row["fails"]:
                stack.ups[subset].fail = 0
        assert status == row["status"]
        assert stack.ups["v1"].count(case) == row["attempts"]


@pytest.mark.parametrize("row", refuse_rows(), ids=[r["id"] for r in refuse_rows()])
def test_refused_row_is_refused_on_reload_naming_the_field(stack: Stack,
                                                          row: dict[str, Any]) -> None:
    good = stack.routes.read_text()
    stack.routes.write_text(routes_yaml(http_of(row), row.get("hosts")))
    try:
        status, body = stack.admin_call("POST", "/reload")
    finally:
        stack.routes.write_text(good)
    assert status == 422
    assert f"VirtualService default/vllm: {row['refuse']}" in body["error"]["message"]
    status, headers, _ = stack.send("weight-single-absent")  # the previous table still routes
    assert (status, headers["x-model-version"]) == (200, "v2")


def test_routes_set_weight_cli_takes_relative_weights(stack: Stack) -> None:
    """`vllm-canary routes set-weight v1=1 v2=3` is 25/75 (Istio >= 1.15: weights are
    relative); all zero is refused with Istio's words, in one line."""
    def cli(*weights: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "routes", "set-weight", *weights, "--route", "http[0]",
                               "--admin-url", stack.admin], env=ENV, capture_output=True,
                              text=True, timeout=60)

    try:
        out = cli("v1=1", "v2=3")
        assert out.returncode == 0, out.stderr
        assert "v1=25  v2=75" in out.stdout
        answers = [stack.send("weight-1-1") for _ in range(200)]
        counts = Counter(headers.get("x-model-version") for _, headers, _ in answers)
        assert within(counts["v2"], 200, 75), counts
        bad = cli("v1=0", "v2=0")
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert "total destination weight = 0" in bad.stderr
    finally:
        assert stack.admin_call("POST", "/reload")[0] == 200  # back to the file's 1:1
