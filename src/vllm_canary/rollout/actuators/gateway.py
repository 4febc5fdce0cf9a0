"""Actuator for the local gateway's admin API: GET /routes and PUT /weights with a bearer
token (loopback by default)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from vllm_canary.rollout.actuators.base import ActuatorError


class GatewayActuator:
    def __init__(self, admin_url: str, token: str, timeout: float = 5.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.admin_url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise ActuatorError(f"gateway admin {method} {path}: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ActuatorError(f"gateway admin {self.admin_url} unreachable: {exc}") from None

    def get_weights(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._call("GET", "/routes").get("weights", {}).items()}

    def set_weights(self, weights: dict[str, int]) -> dict[str, int]:
        answer = self._call("PUT", "/weights", {"weights": weights})
        return {k: int(v) for k, v in answer.get("weights", {}).items()}

    def describe(self) -> str:
        return f"gateway admin API {self.admin_url}"
