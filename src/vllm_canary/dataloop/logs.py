"""Read the model servers' request logs: a day's files (plain or gzip), one record per line.

Torn or invalid lines are counted and skipped, never fatal: a server killed mid-write or a
user's hand-edited file must not stop the daily sample.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from vllm_canary.errors import UserError

try:  # parsing is most of the time on a big day: orjson is ~4x faster than json
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency; json still works
    from json import loads

_NAME = re.compile(r"^requests-(\d{8})-.+\.jsonl(\.gz)?$")


@dataclass
class ReadStats:
    """What reading the logs saw; reported by `sample` so nothing is dropped silently."""

    files: int = 0
    lines: int = 0
    invalid: int = 0
    excluded: dict[str, int] = field(default_factory=dict)

    def exclude(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1


def day_files(log_dir: Path, day: date) -> list[Path]:
    """The request-log files of one UTC day, sorted by name (so reading is deterministic)."""
    if not log_dir.is_dir():
        raise UserError(f"log folder {log_dir} does not exist: pass the `serve --log-dir` folder")
    stamp = day.strftime("%Y%m%d")
    return sorted(
        p for p in log_dir.iterdir()
        if (m := _NAME.match(p.name)) and m.group(1) == stamp and p.is_file()
    )


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_lines(paths: list[Path], stats: ReadStats) -> Iterator[bytes]:
    """Yield the raw lines of the files in order, counting files and lines."""
    for path in paths:
        stats.files += 1
        with _open(path) as fh:
            try:
                for raw in fh:
                    stats.lines += 1
                    yield raw
            except (EOFError, gzip.BadGzipFile, OSError):
                # A truncated gzip member (rotation interrupted): keep what was readable.
                stats.invalid += 1


def read_records(paths: list[Path], stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Yield each valid JSON object of the files in order; count and skip the rest."""
    for raw in read_lines(paths, stats):
        try:
            rec = loads(raw)
        except ValueError:  # orjson.JSONDecodeError is a ValueError too
            stats.invalid += 1
            continue
        if isinstance(rec, dict):
            yield rec
        else:
            stats.invalid += 1
