"""The `vllm-canary` command: one sub-command per user job.

Each feature area registers its own sub-commands (module-level `register(subparsers)`), so
this file stays thin: it parses, dispatches, and renders user errors as one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from vllm_canary import __version__
from vllm_canary.errors import UserError

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "vllm_canary.server.commands",
    "vllm_canary.server.loracommands",
    "vllm_canary.gateway.commands",
    "vllm_canary.k8s.commands",
    "vllm_canary.dataloop.commands",
    "vllm_canary.rollout.commands",
    "vllm_canary.console.commands",
)

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-canary",
        description="Release a new LLM version safely: serve, route, observe, decide.",
    )
    parser.add_argument("--version", action="version", version=f"vllm-canary {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch to the sub-command's handler, and render user errors as one line."""
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        code = handler(args)
    except UserError as exc:
        print(f"vllm-canary {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vllm-canary ... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
