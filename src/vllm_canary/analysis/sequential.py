"""An always-valid sequential test that the canary's event rate is no worse than the baseline's.

Errors (or requests slower than a latency threshold) arrive in each version as counting
processes. Given how many requests each version served in a window and how many events
happened in total, the share of events that hit the canary is Binomial with
theta(delta) = n_c*delta / (n_c*delta + n_b), delta being the canary/baseline rate ratio
(the Poisson conditioning of Lindon & Malek 2022, "Anytime-valid inference for multinomial
count data"). The product over windows of the likelihood ratio of delta against delta0,
mixed over a grid of delta > delta0 (a mixture SPRT, Johari et al.), is a nonnegative
supermartingale whenever the true ratio is <= delta0, so rejecting once it reaches 1/alpha
keeps the false-rollback rate below alpha however often one looks (Ville's inequality).
Mirrored (alternatives below delta0, direction "within"), the same construction shows that
the canary is *not* worse than delta0 times the baseline: the promotion gate's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

GRID_POINTS = 16
GRID_SPAN = 16.0  # the alternatives go from delta0 to delta0 * GRID_SPAN (log-spaced)


def delta_grid(delta0: float, points: int = GRID_POINTS, span: float = GRID_SPAN,
               direction: str = "worse") -> NDArray:
    """Log-spaced alternatives strictly above delta0 ("worse") or below it ("within"),
    the mixture's prior with uniform weights."""
    steps = np.geomspace(span ** (1.0 / points), span, points)
    return delta0 * steps if direction == "worse" else delta0 / steps


def log_lr_increment(
    x_c: ArrayLike, x_b: ArrayLike, n_c: ArrayLike, n_b: ArrayLike,
    deltas: NDArray, delta0: float,
) -> NDArray:
    """Log likelihood ratio of each delta against delta0 for one window, shape (..., grid).

    Closed form of x_c*log(theta_d/theta_0) + x_b*log((1-theta_d)/(1-theta_0)); a window
    where either version served nothing carries no information and contributes 0.
    """
    xc = np.asarray(x_c, dtype=float)[..., None]
    xb = np.asarray(x_b, dtype=float)[..., None]
    nc = np.asarray(n_c, dtype=float)[..., None]
    nb = np.asarray(n_b, dtype=float)[..., None]
    informative = (nc > 0) & (nb > 0)
    safe_nc = np.where(informative, nc, 1.0)
    safe_nb = np.where(informative, nb, 1.0)
    inc = xc * np.log(deltas / delta0) + (xc + xb) * np.log(
        (safe_nc * delta0 + safe_nb) / (safe_nc * deltas + safe_nb)
    )
    return np.where(informative, inc, 0.0)


def log_mixture(log_lr: NDArray) -> NDArray:
    """Log of the uniform mixture over the grid (last axis) of likelihood ratios."""
    top = np.max(log_lr, axis=-1, keepdims=True)
    return (top + np.log(np.mean(np.exp(log_lr - top), axis=-1, keepdims=True)))[..., 0]


@dataclass
class RateRatioTest:
    """Running mixture SPRT of H0: canary rate <= delta0 * baseline rate; JSON-serialisable."""

    delta0: float = 1.0
    alpha: float = 0.01
    direction: str = "worse"  # H0 "ratio <= delta0" (worse) or "ratio >= delta0" (within)
    log_lr: list[float] = field(default_factory=list)
    events_c: int = 0
    events_b: int = 0
    requests_c: int = 0
    requests_b: int = 0
    max_log_bf: float = 0.0

    def __post_init__(self) -> None:
        if not self.log_lr:
            self.log_lr = [0.0] * GRID_POINTS

    def update(self, x_c: int, x_b: int, n_c: int, n_b: int) -> None:
        """Add one window: events and requests per version since the previous update."""
        grid = delta_grid(self.delta0, direction=self.direction)
        inc = log_lr_increment(x_c, x_b, n_c, n_b, grid, self.delta0)
        self.log_lr = [float(v) for v in np.asarray(self.log_lr) + inc]
        self.events_c += int(x_c)
        self.events_b += int(x_b)
        self.requests_c += int(n_c)
        self.requests_b += int(n_b)
        self.max_log_bf = max(self.max_log_bf, self.log_bf)

    @property
    def log_bf(self) -> float:
        return float(log_mixture(np.asarray(self.log_lr)))

    @property
    def p_value(self) -> float:
        """Always-valid p-value: 1 / the largest Bayes factor seen so far."""
        return float(min(1.0, np.exp(-self.max_log_bf)))

    @property
    def rejected(self) -> bool:
        """True once the evidence against H0 reached 1/alpha (and stays true)."""
        return self.max_log_bf >= np.log(1.0 / self.alpha)

    def ratio_estimate(self) -> float | None:
        """Point estimate of canary/baseline event rate ratio, None with no events."""
        if self.requests_c == 0 or self.requests_b == 0 or self.events_b == 0:
            return None
        return (self.events_c / self.requests_c) / (self.events_b / self.requests_b)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateRatioTest:
        return cls(**data)


def rejection_times(
    x_c: NDArray, x_b: NDArray, n_c: NDArray, n_b: NDArray, delta0: float, alpha: float,
    direction: str = "worse",
) -> NDArray:
    """Vectorised over runs: index of the first window (axis 1) where the test rejects, or -1.

    Arrays have shape (runs, windows); used by the benchmark and the A/A simulations.
    """
    inc = log_lr_increment(x_c, x_b, n_c, n_b, delta_grid(delta0, direction=direction), delta0)
    log_bf = log_mixture(np.cumsum(inc, axis=1))
    hit = log_bf >= np.log(1.0 / alpha)
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), first, -1)
