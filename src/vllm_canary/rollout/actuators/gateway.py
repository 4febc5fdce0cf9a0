"""Actuator for the local gateway's admin API: GET /routes and PUT /weights with a bearer
token (loopback by default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.gateway.adminclient import AdminClient
from vllm_canary.rollout.actuators.base import ActuatorError


class GatewayActuator:
    def __init__(self, admin_url: str, token: str, timeout: float = 5.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.client = AdminClient(self.admin_url, token, timeout)

    def _call(self, request: Callable[[], dict[str, Any]]) -> dict[str, int | float]:
        """The admin API's `weights` (percent of traffic, read from relative weights); its
        errors become ActuatorErrors."""
        try:
            answer = request()
        except NotRunningError as exc:
            raise ActuatorError(
                f"gateway admin {self.admin_url} unreachable: {exc.message}") from None
        except UserError as exc:  # the API refused: its status and message
            raise ActuatorError(exc.message) from None
        return {k: v if isinstance(v, int | float) and not isinstance(v, bool) else float(v)
                for k, v in answer.get("weights", {}).items()}

    def get_weights(self) -> dict[str, int | float]:
        return self._call(self.client.routes)

    def set_weights(self, weights: dict[str, int]) -> dict[str, int | float]:
        return self._call(lambda: self.client.set_weights(weights))

    def describe(self) -> str:
        return f"gateway admin API {self.admin_url}"
