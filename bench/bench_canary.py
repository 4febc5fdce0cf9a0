"""Sequential analysis vs Flagger's method on simulated canary traces (`vllm-canary bench
canary`); the benchmark itself lives in vllm_canary.analysis.benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

from vllm_canary.analysis import benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = list(argv or [])
    if "--out" not in args:
        args += ["--out", str(RESULTS)]
    return benchmark.main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
