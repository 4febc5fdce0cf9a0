"""A small client for the gateway's admin API, used by `routes`, `status` and tests.

Finds the API from explicit flags, else from the running local stack's state file.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError


@dataclass(frozen=True)
class AdminClient:
    url: str
    token: str
    timeout: float = 10.0

    @staticmethod
    def locate(url: str | None = None, token: str | None = None) -> AdminClient:
        """Flags win; else $VLLM_CANARY_ADMIN_TOKEN with --admin-url; else the local stack."""
        token = token or os.environ.get("VLLM_CANARY_ADMIN_TOKEN")
        if url and token:
            return AdminClient(url.rstrip("/"), token)
        state = stackstate.load()
        if state is None:
            if url:
                raise UserError("--admin-url needs --admin-token (or $VLLM_CANARY_ADMIN_TOKEN)")
            raise NotRunningError("no running local stack found: start one with "
                                  "`vllm-canary up`, or pass --admin-url and --admin-token")
        return AdminClient((url or state.admin_url).rstrip("/"), token or state.admin_token)

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; a 4xx/5xx answer becomes a UserError carrying the API's message."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        try:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(url)
            req = urllib.request.Request(url, data=data, method=method, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        except ValueError:
            raise UserError(f"gateway admin API URL {self.url!r} is not an http:// URL; give "
                            "e.g. http://127.0.0.1:15000") from None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            raise UserError(f"gateway admin API: {exc.code} {message}") from None
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
