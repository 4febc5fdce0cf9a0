"""The sample file `annotations/samples_YYYYMMDD.jsonl`: read it, write it atomically, and
keep a `.partial` journal of finished items so a killed run resumes without losing or
doubling an item."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from vllm_canary import atomic
from vllm_canary.errors import UserError


def path_for(out_dir: Path, day: date) -> Path:
    return out_dir / f"samples_{day:%Y%m%d}.jsonl"


def journal_for(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def read_items(path: Path, *, tolerate_torn: bool = False) -> list[dict[str, Any]]:
    """Items of a sample file in order (the journal may end in a torn line: skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            if tolerate_torn:
                continue
            raise UserError(f"{path}:{number} is not valid JSON: is it a samples file?") from None
        if not isinstance(item, dict) or "id" not in item or "answers" not in item:
            if tolerate_torn:
                continue
            raise UserError(f"{path}:{number} is not a sample item (needs id and answers)")
        items.append(item)
    return items


def load_samples(path: Path) -> list[dict[str, Any]]:
    """The items of a samples file named by the user (missing file → UserError)."""
    if not path.is_file():
        raise UserError(f"samples file {path} does not exist: run `vllm-canary sample` first")
    return read_items(path)


def dumps(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def write_atomic(path: Path, items: Iterable[dict[str, Any]]) -> None:
    """Write all items to a temp file in the same folder, fsync, then rename over `path`."""
    with atomic.open_text(path) as fh:
        for item in items:
            fh.write(dumps(item) + "\n")


class Journal:
    """Append-only record of finished items; each line is flushed as soon as it is complete."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def append(self, item: dict[str, Any]) -> None:
        self._fh.write(dumps(item) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
