"""The request log: the data loop's input.

One JSON object per line, appended to `<dir>/requests-YYYYMMDD-<version>-<host>.jsonl` (UTC
day). Lines are written by a background thread (never on the event loop), each with a single
`write()` on an O_APPEND file, so a killed server leaves at most one torn last line; a writer
that finds a torn tail starts on a fresh line, and readers skip what does not parse.

Redaction (server/redact.py) covers every string a record keeps except its metadata
(`REDACT_SKIP`): prompt, messages as strings or parts, names, tool calls and results, stop
sequences, `user`, the completion and error messages. A record that is not valid JSON as it
stands (a lone surrogate, NaN, an object JSON has no type for) is repaired and written, and
counted; nothing is dropped without being counted in `vllm_canary_request_log_records_total`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import queue
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vllm_canary.server.redact import Redactor

# Top-level fields that are the server's own metadata, never client text; `request_id` (which a
# client may set with x-request-id) is kept as sent: shadow pairs and the data loop join on it,
# and a uuid's hex would read as a key. `model` and `endpoint` come from the client: redacted.
REDACT_SKIP = frozenset({"ts", "request_id", "version", "host", "status", "latency_s",
                         "ttft_s", "prompt_tokens", "completion_tokens", "opt_out", "redacted",
                         "finish_reason", "shadow", "repaired"})
OUTCOMES = ("written", "repaired", "dropped", "failed")
MAX_QUEUED_BYTES = 256 * 1024 * 1024  # text waiting for the writer (a flood of 4 MB prompts)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_REDACTOR = Redactor()


def redact(text: str) -> tuple[str, bool]:
    """Mask PII and secrets in one text (see server/redact.py); report if any was."""
    return _REDACTOR.text(text)


def _redact_value(value: Any, redactor: Redactor) -> tuple[Any, bool]:
    if isinstance(value, str):
        if value[:1] in ("{", "[") and value[-1:] in ("}", "]"):
            # JSON in a string (tool-call arguments): masked in its decoded form, where an
            # escaped quote cannot hide a quoted e-mail local part.
            try:
                decoded = json.loads(value)
            except ValueError:
                return redactor.text(value)
            masked, hit = _redact_value(decoded, redactor)
            return (json.dumps(masked, ensure_ascii=False) if hit else value), hit
        return redactor.text(value)
    if isinstance(value, dict):
        hit = False
        for key, item in value.items():
            value[key], found = _redact_value(item, redactor)
            hit |= found
        return value, hit
    if isinstance(value, list | tuple):
        items, hit = [], False
        for item in value:
            masked, found = _redact_value(item, redactor)
            items.append(masked)
            hit |= found
        return items, hit
    return value, False


def redact_record(record: dict[str, Any], redactor: Redactor = _REDACTOR) -> dict[str, Any]:
    """Redact every string of a record in place (nested in messages, parts, tool calls,
    parameters, ...), except the metadata in REDACT_SKIP; sets `redacted`."""
    changed = False
    for key, value in record.items():
        if key not in REDACT_SKIP:
            record[key], hit = _redact_value(value, redactor)
            changed |= hit
    record["redacted"] = changed
    return record


def _text_size(record: dict[str, Any]) -> int:
    """Characters of text in a record (iterative; what the writer will have to redact)."""
    size, stack = 0, [record]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return size


def _repaired(value: Any) -> Any:
    """A JSON-safe copy: lone surrogates become U+FFFD, NaN and infinities null, anything
    JSON has no type for its str()."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_repaired(str(k)): _repaired(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repaired(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    return _repaired(str(value))


def encode_line(record: dict[str, Any]) -> tuple[bytes, bool]:
    """The record as one UTF-8 JSON line, and whether it had to be repaired to be one."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8"), False
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        fixed = _repaired(record)
        fixed["repaired"] = True
        text = json.dumps(fixed, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8"), True


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per request id, so a request is logged by all servers or by none."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class RequestLog:
    """Appends records from any thread; `close()` flushes what is queued.

    `counts` says what became of every record handed to `write`: written, repaired (written
    after `encode_line` made it valid JSON), dropped (the queue was full) or failed (the
    disk refused it); `register` exposes them as a Prometheus counter."""

    def __init__(self, directory: Path, version: str, *, redact: bool = True,
                 sample_rate: float = 1.0, host: str | None = None,
                 redactor: Redactor | None = None) -> None:
        self.directory = Path(directory)
        self.version = version
        self.host = host or socket.gethostname()
        self.redact = redact
        self.redactor = redactor or _REDACTOR
        self.sample_rate = sample_rate
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._queue: queue.Queue[tuple[dict[str, Any], int] | None] = \
            queue.Queue(maxsize=100_000)
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records not in the log: the queue was full or the write failed."""
        return self.counts["dropped"] + self.counts["failed"]

    def register(self, registry: CollectorRegistry) -> None:
        """Expose `counts` as `vllm_canary_request_log_records_total{version, outcome}`."""
        registry.register(_Counts(self))

    def path_for(self, day: str) -> Path:
        return self.directory / f"requests-{day}-{self.version}-{self.host}.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        """Queue a record; never blocks the caller (a full queue, in records or in
        MAX_QUEUED_BYTES of text, drops it and counts)."""
        size = _text_size(record)
        with self._lock:
            if self._queued_bytes + size > MAX_QUEUED_BYTES:
                self.counts["dropped"] += 1
                return
            self._queued_bytes += size
        try:
            self._queue.put_nowait((record, size))
        except queue.Full:
            with self._lock:
                self._queued_bytes -= size
                self.counts["dropped"] += 1

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            record, size = item
            try:
                outcome = "repaired" if self._append(record) else "written"
            except Exception:  # a bad disk must not stop the writer; counted, not silent
                outcome = "failed"
            with self._lock:
                self._queued_bytes -= size
                self.counts[outcome] += 1
        if self._fd is not None:
            os.close(self._fd)

    def _append(self, record: dict[str, Any]) -> bool:
        if self.redact and not record.get("opt_out"):
            redact_record(record, self.redactor)
        line, repaired = encode_line(record)
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        if day != self._day:
            self._open(day)
        assert self._fd is not None
        os.write(self._fd, line)
        return repaired

    def _open(self, day: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.path_for(day)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._day = day
        size = os.fstat(self._fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # torn tail from a crash: start a fresh line
                    os.write(self._fd, b"\n")


class _Counts(Collector):
    """Reads a RequestLog's counts at scrape time (no lock: each is one int)."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vllm_canary_request_log_records",
            "Request-log records by outcome: written, repaired (made valid JSON, then "
            "written), dropped (queue full), failed (the write failed).",
            labels=("version", "outcome"))
        for outcome, n in self.log.counts.items():
            family.add_metric((self.log.version, outcome), n)
        yield family
