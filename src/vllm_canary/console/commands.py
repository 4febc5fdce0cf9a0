"""`vllm-canary console`: the live web console, against the local stack or any Prometheus and
gateway admin API (e.g. a cluster's, through `kubectl port-forward`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from vllm_canary import procs, stackstate
from vllm_canary.console import dashboard as dash
from vllm_canary.console.server import ConsoleConfig, is_loopback, serve
from vllm_canary.errors import UserError
from vllm_canary.gateway.adminclient import add_token_flags, token_from_args
from vllm_canary.rollout import state as rollout_state
from vllm_canary.rollout.strategy import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "console",
        help="web console: the vLLM-SRE dashboard, topology, rollout, quality, routes",
        description="Serve the live console (default http://127.0.0.1:3000). With no flags it "
        "reads the running local stack (`vllm-canary up`); else give --prometheus and "
        "--admin-url (token: $VLLM_CANARY_ADMIN_TOKEN or --admin-token-file; it stays "
        "server-side).",
    )
    p.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. "
                   "http://localhost:9090 (default: the local stack's)")
    p.add_argument("--admin-url", metavar="URL", help="gateway admin API, e.g. "
                   "http://localhost:15000 (default: the local stack's)")
    add_token_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=3000, help="listen port (default 3000)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST:PORT",
                   help="also accept this Host header (a tunnel or port-forward to the "
                   "console on another name or port); repeatable")
    p.add_argument("--dashboard", type=Path, help="Grafana dashboard JSON (default: the "
                   "chart's vllm-sre.json)")
    p.add_argument("--reports", type=Path, default=Path("reports"),
                   help="the data loop's report folders (<day>/decision.json; default ./reports)")
    p.add_argument("--rollout-state", type=Path, help="rollout state file (default: "
                   "$VLLM_CANARY_ROLLOUT_STATE, else the local state folder's rollout.json)")
    p.add_argument("--scrape-interval", default="15s", help="Prometheus' scrape interval, for "
                   "Grafana's $__rate_interval (default 15s; `up` passes 1s)")
    p.add_argument("--refresh", type=float, default=5.0, help="page refresh, seconds")
    p.add_argument("--stable", default="v1", help="stable version (abort sends all here)")
    p.add_argument("--canary", default="v2", help="canary version (promote sends all here)")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> ConsoleConfig:
    """Flags, then the environment, then the running local stack; errors are one line."""
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a TCP port; give a number from 1 to 65535")
    try:
        text = args.scrape_interval
        scrape = parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as exc:
        raise UserError(f"--scrape-interval: {exc}") from None
    if not scrape > 0:
        raise UserError("--scrape-interval must be more than 0")
    if not args.refresh > 0:
        raise UserError("--refresh must be more than 0 seconds")
    for flag, url in (("--prometheus", args.prometheus), ("--admin-url", args.admin_url)):
        if url and not url.startswith(("http://", "https://")):
            raise UserError(f"{flag} {url!r} is not an http:// URL")
    prometheus, admin_url = args.prometheus, args.admin_url
    token = token_from_args(args)
    if not (prometheus and admin_url and token):
        local = stackstate.load()
        if local is not None:
            prometheus = prometheus or local.prometheus_url
            if not admin_url or admin_url.rstrip("/") == local.admin_url:
                admin_url, token = local.admin_url, token or local.admin_token
    if admin_url and not token:
        raise UserError("--admin-url needs $VLLM_CANARY_ADMIN_TOKEN or --admin-token-file")
    path = args.dashboard or dash.default_dashboard_path()
    dash.load(path)  # a bad dashboard file is one line now, not a broken page later
    return ConsoleConfig(
        prometheus_url=prometheus.rstrip("/") if prometheus else None,
        admin_url=admin_url.rstrip("/") if admin_url else None, admin_token=token,
        dashboard_path=path, reports_dir=args.reports,
        rollout_state=args.rollout_state or rollout_state.default_path(),
        scrape_interval=scrape, refresh=args.refresh, stable=args.stable, canary=args.canary,
        host=args.host, port=args.port, extra_hosts=tuple(args.allow_host))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not procs.port_is_free(0, cfg.host):
        raise UserError(f"--host {cfg.host}: cannot listen on this address (not one of this "
                        "machine's?); the default is 127.0.0.1")
    if not procs.port_is_free(cfg.port, cfg.host):
        raise UserError(f"--port {cfg.port}: in use on {cfg.host}; stop what holds it or pass "
                        "another --port")
    if not is_loopback(cfg.host):
        print(f"warning: the console listens on {cfg.host}, beyond this machine; anyone who "
              "reaches it can change weights", file=sys.stderr)

    def ready() -> None:
        where = f"http://{cfg.host}:{cfg.port}"
        print(f"vllm-canary console on {where}  (prometheus {cfg.prometheus_url or 'none'}, "
              f"admin API {cfg.admin_url or 'none'}, dashboard {cfg.dashboard_path})",
              flush=True)

    try:
        asyncio.run(serve(cfg, ready))
    except KeyboardInterrupt:
        return 0
    return 0
