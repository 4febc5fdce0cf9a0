"""Sub-commands of the gateway area: `gateway`, `up`, `status`, `routes get|set-weight`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vllm_canary.config import load_settings
from vllm_canary.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the top-level parser."""
    add_gateway_parser(sub)
    from vllm_canary.gateway import stack, status

    stack.register(sub)
    status.register(sub)
    _routes(sub)


def add_gateway_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="route OpenAI traffic by Istio VirtualService/DestinationRule objects",
        description="Execute the Istio VirtualService + DestinationRule in --routes locally, "
        "with Istio's telemetry on --metrics-port and an admin API on --admin-port.",
    )
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--routes", type=Path,
                   help="YAML with the VirtualService and DestinationRule (default: the chart's)")
    p.add_argument("--upstream", action="append", metavar="SUBSET=URL",
                   help="pods labelled version=SUBSET answer at URL (repeat per version)")
    p.add_argument("--endpoints", type=Path, help="YAML list of {url, labels, workload}")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="traffic port (default 8080)")
    p.add_argument("--metrics-port", type=int, help="Istio metrics port (default 15090)")
    p.add_argument("--admin-host", help="admin API address (default 127.0.0.1; any other "
                   "needs --admin-allow-remote)")
    p.add_argument("--admin-allow-remote", action="store_const", const=True,
                   help="let --admin-host be an address other machines can reach")
    p.add_argument("--admin-port", type=int, help="admin API port (default 15000)")
    p.add_argument("--admin-token-file", type=Path,
                   help="file holding the admin bearer token (or $VLLM_CANARY_ADMIN_TOKEN; "
                   "default: a random one, written to a 0600 file whose path is logged)")
    p.add_argument("--admin-token", help=argparse.SUPPRESS)  # refused: argv shows in `ps`
    p.add_argument("--health-path", help="upstream health check path (default /health, '' off)")
    p.add_argument("--health-interval", type=float, help="seconds between health checks")
    p.add_argument("--watch-interval", type=float, help="seconds between routes-file checks")
    p.add_argument("--max-request-bytes", type=int, help="request body limit (default 32 MiB)")
    p.add_argument("--stream-idle-timeout", type=float, metavar="SECONDS",
                   help="504 (flag SI) when an upstream sends nothing for this long, response "
                   "head included (default 300, Envoy's)")
    p.add_argument("--seed", type=int, help="fix the random weighted choices")
    p.add_argument("--max-mirrors-in-flight", type=int,
                   help="mirror copies in flight per version before more are dropped (64)")
    p.add_argument("--access-log", action="store_const", const=True, help="log every request")
    p.set_defaults(handler=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    from vllm_canary.gateway.server import main
    from vllm_canary.gateway.settings import GatewaySettings

    if args.admin_token is not None:
        raise UserError("--admin-token would show the token to every user of this machine "
                        "(`ps`); put it in a file (--admin-token-file) or in "
                        "$VLLM_CANARY_ADMIN_TOKEN")
    settings = load_settings(GatewaySettings, {**vars(args), "admin_token": None},
                             file=args.config)
    logging.basicConfig(level=logging.INFO if settings.access_log else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    return main(settings)  # a bad routes file is a RoutesError before anything listens


def _admin_flags(p: argparse.ArgumentParser) -> None:
    from vllm_canary.gateway.adminclient import add_token_flags

    p.add_argument("--admin-url", help="gateway admin API (default: the running local stack)")
    add_token_flags(p)
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _routes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("routes", help="show the gateway's routes or change canary weights")
    rsub = p.add_subparsers(dest="routes_command", metavar="ACTION", required=True)
    get = rsub.add_parser("get", help="print routes, weights and generation")
    _admin_flags(get)
    get.set_defaults(handler=_routes_get)
    sw = rsub.add_parser("set-weight", help="set relative weights, e.g. v1=75 v2=25, or v1=1 "
                         "v2=1 for 50/50 (as Istio >= 1.15)")
    sw.add_argument("weights", nargs="+", metavar="SUBSET=WEIGHT")
    sw.add_argument("--route", help="only this http route (default: every weighted route)")
    _admin_flags(sw)
    sw.set_defaults(handler=_routes_set)
    rl = rsub.add_parser("reload", help="re-read the routes file now")
    _admin_flags(rl)
    rl.set_defaults(handler=_routes_reload)


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from vllm_canary.gateway.adminclient import AdminClient, token_from_args

    return AdminClient.locate(args.admin_url, token_from_args(args))


def _routes_get(args: argparse.Namespace) -> int:
    view = _client(args).routes()
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"routes from {view['source']} (generation {view['generation']})")
    for route in view["routes"]:
        weights = "  ".join(f"{k}={v}" for k, v in route["weights"].items())
        print(f"  {route['virtualservice']}/{route['name']:<16} {weights}")
    if view.get("last_error"):
        print(f"last reload rejected: {view['last_error']}")
    return 0


def parse_weights(items: list[str]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in items:
        subset, sep, value = item.partition("=")
        if not sep or not subset or not value.strip().lstrip("-").isdigit():
            raise UserError(f"{item!r}: expected SUBSET=WEIGHT, e.g. v1=75 v2=25")
        weights[subset] = int(value)
    return weights


def _routes_set(args: argparse.Namespace) -> int:
    answer = _client(args).set_weights(parse_weights(args.weights), args.route)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        weights = "  ".join(f"{k}={v}" for k, v in answer["weights"].items())
        print(f"weights {weights} (generation {answer['generation']})")
    return 0


def _routes_reload(args: argparse.Namespace) -> int:
    answer = _client(args).reload()
    print(json.dumps(answer, indent=2) if args.json else f"reloaded (generation "
          f"{answer['generation']})")
    return 0
