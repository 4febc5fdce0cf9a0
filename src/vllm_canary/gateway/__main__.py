"""`python -m vllm_canary.gateway ...`: the `gateway` command alone, so that `up` starts its
gateway child without importing every other area's command modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vllm_canary.errors import UserError
from vllm_canary.gateway.commands import add_gateway_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-canary")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_gateway_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"vllm-canary {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
