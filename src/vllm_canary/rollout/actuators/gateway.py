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

    def _answer(self, request: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The admin API's answer; its errors become ActuatorErrors."""
        try:
            return request()
        except NotRunningError as exc:
            raise ActuatorError(
                f"gateway admin {self.admin_url} unreachable: {exc.message}") from None
        except UserError as exc:  # the API refused: its status and message
            raise ActuatorError(exc.message) from None

    def _call(self, request: Callable[[], dict[str, Any]]) -> dict[str, int | float]:
        """The admin API's `weights` (percent of traffic, read from relative weights)."""
        answer = self._answer(request)
        return {k: v if isinstance(v, int | float) and not isinstance(v, bool) else float(v)
                for k, v in answer.get("weights", {}).items()}

    def get_weights(self) -> dict[str, int | float]:
        return self._call(self.client.routes)

    def set_weights(self, weights: dict[str, int]) -> dict[str, int | float]:
        return self._call(lambda: self.client.set_weights(weights))

    def set_mirror(self, percent: float, subset: str) -> float:
        """Mirror `percent`% of the weighted routes to `subset` (`PUT /mirror`; 0 removes
        it); returns the percentage the gateway confirms."""
        answer = self._answer(lambda: self.client.set_mirror(percent, subset))
        return float((answer.get("mirror") or {}).get("percent", 0.0))

    def describe(self) -> str:
        return f"gateway admin API {self.admin_url}"
