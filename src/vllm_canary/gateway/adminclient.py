"""A small client for the gateway's admin API, used by `routes`, `status` and tests.

Finds the API from explicit flags, else from the running local stack's state file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError

TOKEN_ENV = "VLLM_CANARY_ADMIN_TOKEN"


def add_token_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The admin token of a client command: $VLLM_CANARY_ADMIN_TOKEN or --admin-token-file,
    never argv (what argv holds shows in `ps` to every user of the machine)."""
    p.add_argument("--admin-token-file", type=Path, metavar="FILE",
                   help=f"file holding the admin API's bearer token (or ${TOKEN_ENV}; "
                   "default: the running local stack's)")
    p.add_argument("--admin-token", help=argparse.SUPPRESS)  # still read, with a warning


def token_from_args(args: argparse.Namespace) -> str | None:
    """The token a client command was given (file, then environment), or None. A token on
    argv (`--admin-token`, kept for old scripts) is used with a one-line warning."""
    from vllm_canary.gateway.settings import read_token_file

    if getattr(args, "admin_token", None):
        print(f"warning: --admin-token shows the token in `ps`; use ${TOKEN_ENV} or "
              "--admin-token-file", file=sys.stderr)
        return str(args.admin_token)
    if getattr(args, "admin_token_file", None) is not None:
        return read_token_file(args.admin_token_file)
    return os.environ.get(TOKEN_ENV) or None


class ApiRefused(Exception):
    """An admin API answered with an HTTP error: its status and the message of its
    OpenAI-style body (or `HTTP <status>` when the body has none)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status, self.message = status, message


def call_json(method: str, url: str, token: str, body: Any = None,
              timeout: float = 10.0) -> dict[str, Any]:
    """One bearer-token JSON request to an admin API (ours: the gateway's, a front's LoRA
    one); the answer's JSON object. Raises ApiRefused for a 4xx/5xx answer and
    urllib.error.URLError / OSError when nothing answered."""
    req = urllib.request.Request(
        url, json.dumps(body).encode() if body is not None else None, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise ApiRefused(exc.code, str(message)) from None


@dataclass(frozen=True)
class AdminClient:
    url: str
    token: str
    timeout: float = 10.0

    @staticmethod
    def locate(url: str | None = None, token: str | None = None) -> AdminClient:
        """Flags win; else $VLLM_CANARY_ADMIN_TOKEN with --admin-url; else the local stack."""
        token = token or os.environ.get(TOKEN_ENV)
        if url and token:
            return AdminClient(url.rstrip("/"), token)
        state = stackstate.load()
        if state is None:
            if url:
                raise UserError(f"--admin-url needs ${TOKEN_ENV} or --admin-token-file")
            raise NotRunningError("no running local stack found: start one with "
                                  "`vllm-canary up`, or pass --admin-url (token: "
                                  f"${TOKEN_ENV} or --admin-token-file)")
        return AdminClient((url or state.admin_url).rstrip("/"), token or state.admin_token)

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; a 4xx/5xx answer becomes a UserError carrying the API's message."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise UserError(f"gateway admin API URL {self.url!r} is not an http:// URL; give "
                            "e.g. http://127.0.0.1:15000")
        try:
            return call_json(method, url, self.token, body, self.timeout)
        except ApiRefused as exc:
            raise UserError(f"gateway admin API: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunningError(f"gateway admin API at {self.url} is not reachable "
                                  f"({reason}); is the gateway running?") from None

    def routes(self) -> dict[str, Any]:
        return self.call("GET", "/routes")

    def set_weights(self, weights: dict[str, int], route: str | None = None) -> dict[str, Any]:
        return self.call("PUT", "/weights", {"weights": weights},
                         {"route": route} if route else None)

    def set_mirror(self, percent: float, subset: str = "v2") -> dict[str, Any]:
        """Mirror `percent`% of the weighted routes to `subset` (0 removes the mirror)."""
        return self.call("PUT", "/mirror", {"subset": subset, "percent": percent})

    def reload(self) -> dict[str, Any]:
        return self.call("POST", "/reload")
