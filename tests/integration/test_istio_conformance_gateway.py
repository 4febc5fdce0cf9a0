"""The Istio semantics table (docs/istio-semantics.yaml) against a real `vllm-canary gateway`
process: one case per row, the same rows as the pure-router run. Requests go out as raw HTTP/1.1
bytes (so paths reach the gateway exactly as written), to two loopback upstreams that record
the raw path they get. Rows Istio refuses are written to the routes file and reloaded through
the admin API, which must answer 422 naming the field and keep the previous table."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
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
    """One version's pods: answers 200 with x-model-version, or 503 for the next `fail` ones;
    records (x-case, raw path, host) of every request."""

    version: str
    fail: int = 0
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
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

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.json_response({"ok": True}))
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def count(self, case: str, shadow: bool = False) -> int:
        return sum(c == case and h.endswith("-shadow") == shadow for c, _, h in self.seen)


@dataclass
class Gw:
    port: int
    admin: str
    routes: Path


async def raw(gw: Gw, case: str, target: str = "/v1/completions", method: str = "POST",
              headers: list[list[str]] | None = None) -> tuple[int, dict[str, str], float]:
    """One request as raw bytes on a new connection: (status, headers, seconds)."""
    body = b'{"prompt":"hello","max_tokens":5}'
    lines = [f"{method} {target} HTTP/1.1", f"host: {HOST}", f"x-case: {case}",
             *(f"{k}: {v}" for k, v in headers or []), f"content-length: {len(body)}",
             "connection: close"]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    found = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in found.items()}, \
        time.monotonic() - started


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Gw, dict[str, Upstream]]]:
    ups = {v: await Upstream(v).start() for v in ("v1", "v2")}
    routes = tmp_path / "routes.yaml"
    routes.write_text(all_rows_yaml())
    port, admin_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [CLI, "gateway", "--routes", str(routes), "--port", str(port), "--metrics-port",
             str(free_port()), "--admin-port", str(admin_port), "--seed", "3",
             "--watch-interval", "3600", "--health-interval", "0.5",
             *(a for v, u in ups.items() for a in ("--upstream", f"{v}={u.url}"))],
            env=ENV | {"VLLM_CANARY_STATE": str(tmp_path / "none.json")},
            stdout=subprocess.DEVNULL, stderr=err)
    gw = Gw(port, f"http://127.0.0.1:{admin_port}", routes)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(150):  # bounded: 15 s
                assert proc.poll() is None, log.read_text()
                try:
                    async with s.get(gw.admin + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway process did not start")
        yield gw, ups
    finally:
        proc.terminate()
        proc.wait(10)
        for up in ups.values():
            assert up.runner is not None
            await up.runner.cleanup()


async def test_every_accepted_row_as_envoy_executes_it(
        stack: tuple[Gw, dict[str, Upstream]]) -> None:
    gw, ups = stack
    for row in request_rows():
        case, n = row["id"], int(row.get("n", 1))
        for item in row.get("requests", []):
            spec = item["send"]
            for _ in range(n if "to" in item else 1):
                status, headers, _ = await raw(gw, case, spec.get("path", "/v1/completions"),
                                               headers=spec.get("headers"))
                if item.get("bad_request"):
                    assert status == 400, case
                elif item.get("no_route"):
                    assert status == 404, case
                else:
                    assert (status, headers.get("x-model-version")) == (200, item["to"]), case
            if "upstream_path" in item:
                sub = ups[item["to"]]
                last = [p for c, p, _ in sub.seen if c == case][-1]
                assert last.partition("?")[0] == item["upstream_path"], case
        answers = []
        if any(k in row for k in ("shares", "aborts", "delays", "mirrored")):
            answers = [await raw(gw, case) for _ in range(n)]
        if "shares" in row:
            counts = Counter(h.get("x-model-version") for _, h, _ in answers)
            for subset, pct in row["shares"].items():
                assert within(counts[subset], n, pct), (case, counts)
        if "aborts" in row:
            aborted = [s for s, _, _ in answers if s != 200]
            assert len(aborted) == row["aborts"], case
            assert set(aborted) <= {row.get("abort_status", 503)}, case
        if "delays" in row:
            floor = row.get("delay_s", 1.0)
            assert sum(t >= floor for _, _, t in answers) == row["delays"], case
        if "mirrored" in row:
            for _ in range(60):  # mirrors are fire-and-forget: wait for them, bounded
                if ups["v2"].count(case, shadow=True) >= row["mirrored"]:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert ups["v2"].count(case, shadow=True) == row["mirrored"], case
        if "fails" in row:
            for subset, k in row["fails"].items():
                ups[subset].fail = k
            status, _, _ = await raw(gw, case)
            assert status == row["status"], case
            assert ups["v1"].count(case) == row["attempts"], case
            for subset in row["fails"]:
                ups[subset].fail = 0


async def test_every_refused_row_is_refused_on_reload_naming_the_field(
        stack: tuple[Gw, dict[str, Upstream]]) -> None:
    gw, _ = stack
    good = gw.routes.read_text()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        for row in refuse_rows():
            gw.routes.write_text(routes_yaml(http_of(row)))
            async with s.post(gw.admin + "/reload") as resp:
                body = json.loads(await resp.read())
            assert resp.status == 422, row["id"]
            assert f"VirtualService default/vllm: {row['refuse']}" in \
                body["error"]["message"], row["id"]
        gw.routes.write_text(good)
        async with s.post(gw.admin + "/reload") as resp:
            assert resp.status == 200
    status, headers, _ = await raw(gw, "weight-single-absent")  # the table still routes
    assert (status, headers["x-model-version"]) == (200, "v2")


async def test_routes_set_weight_cli_takes_relative_weights(
        stack: tuple[Gw, dict[str, Upstream]]) -> None:
    """`vllm-canary routes set-weight v1=1 v2=3` is 25/75 (Istio >= 1.15: weights are
    relative), on the route named."""
    gw, _ = stack
    out = subprocess.run([CLI, "routes", "set-weight", "v1=1", "v2=3", "--route", "http[0]",
                          "--admin-url", gw.admin], env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "v1=25  v2=75" in out.stdout
    answers = [await raw(gw, "weight-1-1") for _ in range(200)]
    counts = Counter(headers.get("x-model-version") for _, headers, _ in answers)
    assert within(counts["v2"], 200, 75), counts
    bad = subprocess.run([CLI, "routes", "set-weight", "v1=0", "v2=0", "--route", "http[0]",
                          "--admin-url", gw.admin], env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "total destination weight = 0" in bad.stderr
    assert "Traceback" not in bad.stderr
