"""`vllm-canary lora load|list|unload`: LoRA versions on a running vLLM front, hot.

The server is the base version's front (`--server URL`, else the local stack's base server)
and its admin API (server/lorafront.py). With a local stack, `load` also adds the version to
the gateway's routes at weight 0 (so `routes set-weight` can give it traffic) and `unload`
first takes it out of them, refusing while it still has weight.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.gateway.adminclient import ApiRefused, call_json

ADMIN_PATH = "/vllm-canary/lora"


@dataclass(frozen=True)
class LoraClient:
    """The admin API of one front (`url` is its OpenAI base URL)."""

    url: str
    token: str
    timeout: float = 180.0  # loading an adapter reads it from disk

    def call(self, method: str, path: str = "", body: Any = None) -> dict[str, Any]:
        try:
            return call_json(method, self.url + ADMIN_PATH + path, self.token, body,
                             self.timeout)
        except ApiRefused as exc:
            if exc.status == 404 and not path:
                raise UserError(f"{self.url} does not serve LoRA versions (start it with "
                                "`serve --lora ...` or `--enable-lora`, or `up --lora-v2 DIR`)"
                                ) from None
            raise UserError(f"{self.url}: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunningError(f"model server {self.url} is not reachable ({reason})") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="load, list or unload LoRA adapter versions, hot",
                       description="LoRA versions served by another version's vLLM "
                       "(docs/lora.md). Default server: the local stack's base server.")
    lsub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    load = lsub.add_parser("load", help="load an adapter as a new version (no restart)")
    load.add_argument("--version", required=True, help="the new version's label, e.g. v3")
    load.add_argument("--path", required=True, type=Path, help="the adapter folder (PEFT's)")
    load.add_argument("--name", help="served name (default: base-version-<hash of weights>)")
    load.add_argument("--error-rate", type=float, metavar="RATE",
                      help="fail this fraction of its requests at the front (fault injection "
                      "for canary tests, as up --v2-error-rate)")
    load.add_argument("--no-routes", action="store_true",
                      help="do not add the version to the local stack's routes")
    _flags(load)
    load.set_defaults(handler=_load)
    ls = lsub.add_parser("list", help="the server's base and adapter versions")
    _flags(ls)
    ls.set_defaults(handler=_list)
    un = lsub.add_parser("unload", help="take a version out of the routes, then unload it")
    un.add_argument("--version", required=True)
    un.add_argument("--no-routes", action="store_true",
                    help="do not touch the local stack's routes (and do not check weights)")
    un.add_argument("--repoint", metavar="VERSION",
                    help="a route that sends it all its traffic (e.g. x-ab-test) goes to "
                    "VERSION instead (default: refuse)")
    _flags(un)
    un.set_defaults(handler=_unload)


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", help="the base version's front, e.g. "
                   "http://127.0.0.1:8101 (default: the local stack's)")
    p.add_argument("--base", default=None, help="the local stack's base version (default v1)")
    p.add_argument("--token", help="admin token (or $VLLM_CANARY_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _client(args: argparse.Namespace) -> tuple[LoraClient, stackstate.StackState | None]:
    token = args.token or os.environ.get("VLLM_CANARY_ADMIN_TOKEN")
    stack = stackstate.load()
    if args.server:
        if not token:
            raise UserError("--server needs --token (or $VLLM_CANARY_ADMIN_TOKEN)")
        return LoraClient(args.server.rstrip("/"), token), None
    if stack is None:
        raise NotRunningError("no running local stack found: start one with `vllm-canary up "
                              "--lora-v2 DIR`, or pass --server URL and --token")
    base = args.base or next(iter(stack.lora.values()), "v1")
    if base not in stack.servers:
        raise UserError(f"the local stack has no {base} server (it has "
                        f"{', '.join(stack.servers)})")
    return LoraClient(stack.servers[base].url, token or stack.admin_token), stack


def _print(args: argparse.Namespace, answer: dict[str, Any], line: str) -> int:
    print(json.dumps(answer, indent=2) if args.json else line)
    return 0


def _list(args: argparse.Namespace) -> int:
    client, _ = _client(args)
    view = client.call("GET")
    if args.json:
        return _print(args, view, "")
    print(f"{view['base']}  {view['base_model']}  (base; --max-lora-rank {view['max_lora_rank']})")
    for a in view["adapters"]:
        print(f"{a['version']}  {a['name']}  (LoRA rank {a['rank']}, {a['path']})")
    return 0


def _rewrite_routes(stack: stackstate.StackState, admin: Any,
                    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Apply `change` to the routes the gateway runs now (its live weights, which a rollout
    or `routes set-weight` may have moved away from the file's), write them to the stack's
    routes file and reload it: the file and the gateway agree, and no weight jumps back."""
    from vllm_canary.gateway import loraroutes

    view = admin.routes()
    docs = loraroutes.read(Path(stack.routes_file))
    live = [*view["virtualservices"], *view["destinationrules"]]
    kept = [d for d in docs if d.get("kind") not in ("VirtualService", "DestinationRule")]
    loraroutes.write(Path(stack.routes_file), [*change(live), *kept])
    admin.reload()


def _load(args: argparse.Namespace) -> int:
    client, stack = _client(args)
    body = {"version": args.version, "path": str(args.path.expanduser().resolve()),
            "name": args.name}
    if args.error_rate is not None:
        body["error_rate"] = args.error_rate
    adapter = client.call("POST", "", body)
    routed = ""
    if stack is not None and not args.no_routes:
        from vllm_canary.gateway import loraroutes
        from vllm_canary.gateway.adminclient import AdminClient

        base = args.base or next(iter(stack.lora.values()), "v1")
        admin = AdminClient(stack.admin_url, stack.admin_token)
        _rewrite_routes(stack, admin, lambda docs: loraroutes.add_version(docs, args.version,
                                                                          base))
        stackstate.save(stack.model_copy(update={"lora": {**stack.lora, args.version: base}}))
        routed = (f"; routed at weight 0 (give it traffic: vllm-canary routes set-weight "
                  f"... {args.version}=N)")
    return _print(args, adapter, f"loaded {adapter['version']} as {adapter['name']}{routed}")


def _unload(args: argparse.Namespace) -> int:
    client, stack = _client(args)
    adapter = unload(client, stack if not args.no_routes else None, args.version, args.repoint)
    return _print(args, adapter, f"unloaded {adapter['version']} ({adapter['name']})")


def unload(client: LoraClient, stack: stackstate.StackState | None, version: str,
           repoint: str | None = None) -> dict[str, Any]:
    """Take `version` out of the stack's routes (refused while it has weight; a route that
    sends it everything goes to `repoint` if given), then unload it from the server."""
    if stack is not None:
        from vllm_canary.gateway import loraroutes
        from vllm_canary.gateway.adminclient import AdminClient

        admin = AdminClient(stack.admin_url, stack.admin_token)
        _rewrite_routes(stack, admin,
                        lambda docs: loraroutes.remove_version(docs, version, repoint))
        stackstate.save(stack.model_copy(update={"lora": {
            v: b for v, b in stack.lora.items() if v != version}}))
    return client.call("DELETE", "/" + version)


def unload_aborted(version: str, base: str) -> None:
    """`rollout start --unload-on-abort`: after an abort (all traffic on `base`), unload the
    canary if it is a LoRA version of the local stack; a line says what happened."""
    stack = stackstate.load()
    if stack is None or version not in stack.lora:
        print(f"--unload-on-abort: {version} is not a LoRA version of a running local stack; "
              "nothing unloaded")
        return
    client = LoraClient(stack.servers[stack.lora[version]].url, stack.admin_token)
    try:
        adapter = unload(client, stack, version, repoint=base)
    except UserError as exc:
        print(f"--unload-on-abort: {version} not unloaded: {exc.message}")
        return
    print(f"unloaded the aborted adapter {version} ({adapter['name']})")
