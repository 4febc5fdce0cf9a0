"""`up` stopped right after serving traffic starts again at once on the same ports: the
connections it closed sit in TIME_WAIT for a minute, which the port check must not take for
"port in use" (it binds as the servers do, with SO_REUSEADDR)."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from tests.e2e import test_up
from tests.e2e.test_up import SEED_BODY, completion, start_stack, stop_stack


def test_up_restarts_within_a_second_after_traffic(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first = start_stack(tmp_path / "one", "--no-prometheus")
    try:
        # keep-alive connections left open: at stop the servers close them (TIME_WAIT on
        # the gateway's and the servers' ports)
        conns = []
        for flag in ("--port", "--v1-port", "--v2-port"):
            conn = http.client.HTTPConnection("127.0.0.1", first.ports[flag], timeout=30)
            for _ in range(3):
                conn.request("POST", "/v1/completions", body=SEED_BODY)
                assert conn.getresponse().read()
            conns.append(conn)
    finally:
        assert stop_stack(first) == 0
    stopped = time.monotonic()
    second = None
    try:
        monkeypatch.setattr(test_up, "free_ports", lambda n: list(first.ports.values()))
        second = start_stack(tmp_path / "two", "--no-prometheus")
        assert second.ports == first.ports
        assert time.monotonic() - stopped < 30
        assert completion(second.url)[0] == 200
    finally:
        for conn in conns:
            conn.close()
        if second is not None:
            stop_stack(second)
