"""No request body can stall `serve`: for each worst case of the work that grows with input
(JSON decoding, validation, the simulator, the request log's redaction), a body of the maximum
size is sent while /health is polled; /health answers in under a second throughout, and the
request's log record is written (redacted) meanwhile.

The probe's finding: a 100 KB one-word prompt froze the server for ~19 s (the e-mail regex was
quadratic and held the GIL in the log thread)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.server import StartServer

MAX_BODY = 4 * 1024 * 1024  # serve's default --max-body-bytes (settings.max_body_bytes)
SHAPES = {
    "one word": "a",
    "at signs": "@",
    "a@ pairs": "a@",
    "quotes": '"',
    "digit groups": "1234567 ",
    "phone numbers": "+1 415-555-2671, ",
    "JWT starts": "eyJ",
    "base64": "aB3/",
    "dashes": "-",
    "e-mails": "bob@example.com ",
}


def _body(unit: str) -> bytes:
    room = MAX_BODY - 200
    encoded = json.dumps(unit)[1:-1]  # as it appears inside the JSON string
    prompt = unit * (room // len(encoded.encode()))
    return json.dumps({"prompt": prompt, "max_tokens": 1}).encode()


def _lines(log_dir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in log_dir.glob("*.jsonl"))


def test_max_size_worst_cases_never_stall_health(serve_process: StartServer) -> None:
    server = serve_process("v1", "--ttft-ms", "0", "--tpot-ms", "0",
                           "--max-model-len", "10000000", "--latency-factor", "0.000001")
    worst: dict[str, float] = {}
    for name, unit in SHAPES.items():
        body = _body(unit)
        assert len(body) <= MAX_BODY
        before = _lines(server.log_dir)
        result: dict[str, object] = {}

        def send(body: bytes = body, result: dict[str, object] = result) -> None:
            req = urllib.request.Request(server.url + "/v1/completions", data=body)
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    result["status"] = resp.status
            except urllib.error.HTTPError as exc:
                result["status"] = exc.code

        sender = threading.Thread(target=send)
        sender.start()
        slowest, deadline = 0.0, time.monotonic() + 60
        while (sender.is_alive() or _lines(server.log_dir) == before) and \
                time.monotonic() < deadline:
            started = time.monotonic()
            with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
                assert resp.status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
        sender.join(5)
        worst[name] = slowest
        assert result.get("status") == 200, (name, result)
        assert _lines(server.log_dir) == before + 1, f"{name}: no log record within 60 s"
    print("slowest /health while a 4 MiB worst case was handled:",
          {k: f"{v * 1000:.0f} ms" for k, v in worst.items()})
    assert max(worst.values()) < 1.0, worst
    text = "".join(p.read_text() for p in server.log_dir.glob("*.jsonl"))
    assert "bob@example.com" not in text and "415-555-2671" not in text


@pytest.mark.parametrize("unit", ["bob@example.com ", "+1 415-555-2671, "])
def test_the_redacted_record_has_no_pii(serve_process: StartServer, unit: str) -> None:
    server = serve_process("v1", "--ttft-ms", "0", "--tpot-ms", "0")
    body = json.dumps({"prompt": unit * 200, "max_tokens": 1}).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + "/v1/completions",
                                                       data=body), timeout=30) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 10
    while _lines(server.log_dir) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    [record] = [json.loads(line) for p in server.log_dir.glob("*.jsonl")
                for line in p.read_text().splitlines()]
    assert record["redacted"] is True and unit.strip(" ,") not in record["prompt"]
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'vllm_canary_request_log_records_total{outcome="written",version="v1"} 1.0' \
        in metrics
