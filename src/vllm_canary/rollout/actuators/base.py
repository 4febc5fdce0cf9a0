"""How the controller moves traffic: read and set the per-version weights (plugin kind; one
file per implementation, chosen by `ACTUATORS` in actuators/__init__.py)."""

from __future__ import annotations

from typing import Protocol


class ActuatorError(Exception):
    """The weights could not be read or set (network, auth, conflict); the controller retries."""


class Actuator(Protocol):
    def get_weights(self) -> dict[str, int]:
        """The weights traffic is routed with now, by version (subset), summing to 100."""
        ...

    def set_weights(self, weights: dict[str, int]) -> dict[str, int]:
        """Route with `weights`; returns the weights the target confirms it now uses."""
        ...

    def describe(self) -> str:
        """One line for the live view."""
        ...
