"""Request log: redaction, sampling, round trip, and surviving a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vllm_canary.dataloop.logs import ReadStats, read_records
from vllm_canary.server.requestlog import RequestLog, redact, sampled


def test_redacts_emails_phones_and_keys_but_not_numbers() -> None:
    text, hit = redact("mail a.b@example.org, call +1 415-555-2671, key sk-abcdefghijklmnop123")
    assert hit
    assert text == "mail [EMAIL], call [PHONE], key [KEY]"
    assert redact("in 2024 we sold 12345 units at 3.14") == (
        "in 2024 we sold 12345 units at 3.14", False)


def test_sampling_is_deterministic_per_request_id_and_near_the_rate() -> None:
    picks = [sampled(f"req-{i}", 0.25) for i in range(4000)]
    assert picks == [sampled(f"req-{i}", 0.25) for i in range(4000)]
    assert 0.22 < sum(picks) / len(picks) < 0.28


def test_records_round_trip_one_file_per_day(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, "v1", host="h1")
    log.write({"request_id": "a", "prompt": "write to bob@example.com", "completion": "ok"})
    log.write({"request_id": "b", "opt_out": True})
    log.close()
    [path] = tmp_path.iterdir()
    assert path.name.startswith("requests-") and path.name.endswith("-v1-h1.jsonl")
    records = list(read_records([path], ReadStats()))
    assert [r["request_id"] for r in records] == ["a", "b"]
    assert records[0]["prompt"] == "write to [EMAIL]" and records[0]["redacted"] is True


WRITER = """
import sys
from pathlib import Path
from vllm_canary.server.requestlog import RequestLog
log = RequestLog(Path(sys.argv[1]), "v1", host="h")
i = 0
print("started", flush=True)
while True:
    log.write({"request_id": str(i), "prompt": "x" * 5000})
    i += 1
"""


def test_writer_killed_mid_write_leaves_readable_lines(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            p.stat().st_size > 300_000 for p in tmp_path.glob("*.jsonl")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    [path] = list(tmp_path.glob("*.jsonl"))
    before = list(read_records([path], ReadStats()))
    assert len(before) > 50
    # A torn tail is possible; a new writer must start on a fresh line after it.
    log = RequestLog(tmp_path, "v1", host="h")
    log.write({"request_id": "after"})
    log.close()
    after = list(read_records([path], ReadStats()))
    assert after[-1]["request_id"] == "after"
    assert len(after) == len(before) + 1
    lines = path.read_bytes().split(b"\n")
    bad = [ln for ln in lines if ln and not _is_json(ln)]
    assert len(bad) <= 1  # at most the one torn line, which readers skip


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
