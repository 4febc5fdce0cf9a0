"""`python -m vllm_canary.gateway ...`: the `gateway` command alone, so that `up` starts its
gateway child without importing every other area's command modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vllm_canary.cli import run
from vllm_canary.gateway.commands import add_gateway_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-canary")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_gateway_parser(sub)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
