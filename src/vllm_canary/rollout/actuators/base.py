"""How the controller moves traffic: read and set the per-version weights (plugin kind; one
file per implementation, chosen by `ACTUATORS` in actuators/__init__.py)."""

from __future__ import annotations

from typing import Protocol


class ActuatorError(Exception):
    """The weights could not be read or set (network, auth, conflict); the controller retries."""


class Actuator(Protocol):
    def get_weights(self) -> dict[str, int | float]:
        """Percent of traffic per version (subset) now, read from the route's relative
        weights (Istio >= 1.15: 1:1 is 50/50), so summing to 100."""
        ...

    def set_weights(self, weights: dict[str, int]) -> dict[str, int | float]:
        """Route with `weights` (the controller sets percentages summing to 100); returns the
        percentages the target confirms it now uses."""
        ...

    def describe(self) -> str:
        """One line for the live view."""
        ...


class Mirroring(Protocol):
    """An actuator that can also dark-launch (the `setMirror` step): both built-in ones."""

    def set_mirror(self, percent: float, subset: str) -> float:
        """Mirror `percent`% (0..100) of the weighted route's traffic to `subset`, answers
        discarded; 0 removes the mirror. Returns the percentage the target confirms."""
        ...
