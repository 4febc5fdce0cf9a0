"""Run every benchmark module (or those named on the command line) and list the tables."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name.removeprefix('bench_')}")
        print(f"==> {module.__name__}", flush=True)
        started = time.monotonic()
        try:
            module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' tables
            print(f"!! {module.__name__} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
        print(f"    {time.monotonic() - started:.0f}s", flush=True)
    tables = sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "results").glob("*.md"))
    print("tables:", *tables, sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
