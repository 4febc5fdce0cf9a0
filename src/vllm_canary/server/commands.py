"""`vllm-canary serve`: one OpenAI-compatible model server (engine sim, vllm or upstream)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vllm_canary.config import load_settings
from vllm_canary.server.settings import ServeSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run an OpenAI-compatible model server for one version",
        description="Serve one model version. Flags override VLLM_CANARY_* environment "
        "variables, which override --config. Arguments after `--` go to vLLM.",
    )
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--version", dest="version", help="version label, e.g. v1 (default v1)")
    p.add_argument("--engine", choices=["sim", "vllm", "upstream"], help="default sim")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default 8000)")
    p.add_argument("--metrics-port", type=int, help="metrics-only port (default 8001, 0: off)")
    p.add_argument("--log-dir", type=Path, help="request log folder (default: no log)")
    p.add_argument("--log-sample-rate", type=float, help="fraction of requests logged")
    p.add_argument("--no-redact", dest="log_redact", action="store_const", const=False,
                   help="log prompts without masking e-mails, phones and keys")
    p.add_argument("--model-name", help="served model name")
    p.add_argument("--model", help="vllm: model directory or name")
    p.add_argument("--upstream", help="upstream: OpenAI-compatible base URL")
    p.add_argument("--upstream-timeout", type=float,
                   help="vllm/upstream: seconds of upstream silence before a 504 (default 600)")
    p.add_argument("--vllm-python", help="vllm: Python that has vLLM installed")
    p.add_argument("--startup-timeout", type=float, help="vllm: seconds to wait for readiness")
    p.add_argument("--lora", action="append", metavar="VERSION[:NAME]=DIR",
                   help="vllm: serve the LoRA adapter in DIR as version VERSION (repeatable)")
    p.add_argument("--enable-lora", action="store_const", const=True,
                   help="vllm: allow `vllm-canary lora load` even with no --lora at start")
    p.add_argument("--max-lora-rank", type=int, help="vllm: largest adapter rank (default: "
                   "what the --lora adapters need, at least 16)")
    p.add_argument("--max-loras", type=int, help="vllm: adapters in one batch (default 4)")
    p.add_argument("--lora-error-rate", action="append", metavar="VERSION=RATE",
                   help="vllm: fail this fraction of an adapter version's requests at the "
                   "front (fault injection for canary tests)")
    p.add_argument("--error-rate", type=float, help="sim: fraction of requests that fail")
    p.add_argument("--latency-factor", type=float, help="sim: multiply all latencies")
    p.add_argument("--ttft-ms", type=float, help="sim: base time to first token")
    p.add_argument("--tpot-ms", type=float, help="sim: time per output token")
    p.add_argument("--max-model-len", type=int, help="sim: context length in tokens")
    p.add_argument("--seed", type=int, help="sim: seed for latency noise and failures")
    p.add_argument("--drain-timeout", type=float, help="seconds to finish in-flight on stop")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    flags = dict(vars(args))
    extra = [a for a in flags.pop("vllm_args") or [] if a != "--"]
    flags["vllm_args"] = extra or None
    settings = load_settings(ServeSettings, flags, file=args.config)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    from vllm_canary.aio import run as run_loop
    from vllm_canary.server.run import serve

    return run_loop(serve(settings))
