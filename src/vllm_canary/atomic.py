"""Atomic file writes: readers (a controller polling a state file, a re-run of the sampler)
see the old file or the new one, never half of one, even if the writer is killed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def open_text(path: Path, mode: int | None = None) -> Iterator[TextIO]:
    """Write to a temp file beside `path`; on success fsync and rename it over `path`
    (with permissions `mode` if given), on failure remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    with open_text(path, mode) as fh:
        fh.write(text)
