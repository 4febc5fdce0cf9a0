"""Actuator for the local gateway's admin API: GET /routes and PUT /weights with a bearer
token (loopback by default)."""

from __future__ import annotations

from typing import Any

from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.gateway.adminclient import AdminClient
from vllm_canary.rollout.actuators.base import ActuatorError


class GatewayActuator:
    def __init__(self, admin_url: str, token: str, timeout: float = 5.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.client = AdminClient(self.admin_url, token, timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self.client.call(method, path, body)
        except NotRunningError as exc:
            raise ActuatorError(
                f"gateway admin {self.admin_url} unreachable: {exc.message}") from None
        except UserError as exc:
            raise ActuatorError(f"{method} {path}: {exc.message}") from None

    def get_weights(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._call("GET", "/routes").get("weights", {}).items()}

    def set_weights(self, weights: dict[str, int]) -> dict[str, int]:
        answer = self._call("PUT", "/weights", {"weights": weights})
        return {k: int(v) for k, v in answer.get("weights", {}).items()}

    def describe(self) -> str:
        return f"gateway admin API {self.admin_url}"
