"""The request log: the data loop's input.

One JSON object per line, appended to `<dir>/requests-YYYYMMDD-<version>-<host>.jsonl` (UTC
day). Lines are written by a background thread (never on the event loop), each with a single
`write()` on an O_APPEND file, so a killed server leaves at most one torn last line; a writer
that finds a torn tail starts on a fresh line, and readers skip what does not parse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import re
import socket
import threading
from pathlib import Path
from typing import Any

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# API keys and bearer tokens: well-known prefixes, or long opaque secrets after "key"/"token".
_KEY = re.compile(
    r"\b(?:sk|pk|rk|ghp|gho|ghs|xox[abpr]|AKIA|hf)[-_A-Za-z0-9]{12,}\b"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}"
    r"|\b[A-Fa-f0-9]{32,}\b"
)
# Phone numbers: 9+ digits with optional separators and country code; not bare years/ids.
_PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?![\w.])"
)


def redact(text: str) -> tuple[str, bool]:
    """Mask e-mail addresses, API-key-like strings and phone numbers; report if any was."""
    out = _EMAIL.sub("[EMAIL]", text)
    out = _KEY.sub("[KEY]", out)
    out = _PHONE.sub(lambda m: "[PHONE]" if sum(c.isdigit() for c in m[0]) >= 9 else m[0], out)
    return out, out != text


def redact_record(record: dict[str, Any]) -> dict[str, Any]:
    """Redact the free-text fields of a record in place; sets `redacted`."""
    changed = False
    for key in ("prompt", "completion"):
        if isinstance(record.get(key), str):
            record[key], hit = redact(record[key])
            changed |= hit
    for message in record.get("messages") or []:
        if isinstance(message.get("content"), str):
            message["content"], hit = redact(message["content"])
            changed |= hit
    record["redacted"] = changed
    return record


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per request id, so a request is logged by all servers or by none."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class RequestLog:
    """Appends records from any thread; `close()` flushes what is queued."""

    def __init__(self, directory: Path, version: str, *, redact: bool = True,
                 sample_rate: float = 1.0, host: str | None = None) -> None:
        self.directory = Path(directory)
        self.version = version
        self.host = host or socket.gethostname()
        self.redact = redact
        self.sample_rate = sample_rate
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=100_000)
        self._fd: int | None = None
        self._day = ""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def path_for(self, day: str) -> Path:
        return self.directory / f"requests-{day}-{self.version}-{self.host}.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        """Queue a record; never blocks the caller (a full queue drops and counts)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self._append(record)
            except Exception:  # a bad record must not stop the writer
                self.dropped += 1
        if self._fd is not None:
            os.close(self._fd)

    def _append(self, record: dict[str, Any]) -> None:
        if self.redact and not record.get("opt_out"):
            redact_record(record)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        if day != self._day:
            self._open(day)
        assert self._fd is not None
        os.write(self._fd, line.encode("utf-8"))

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
