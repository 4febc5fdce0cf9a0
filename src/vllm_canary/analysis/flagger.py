"""A faithful re-implementation of Flagger's canary analysis (fluxcd/flagger, scheduler.go),
vectorised over simulated runs, to benchmark against on identical traces.

Semantics reproduced: every `interval` the scheduler first rolls back if failedChecks has
reached `threshold`; otherwise it runs the metric checks (skipped on the very first
iteration, when the canary weight is still 0); a failed check increments failedChecks and
holds the weight; a passed check adds `stepWeight` up to `maxWeight`; a passed check at
`maxWeight` promotes. Built-in checks read the canary workload only: request-success-rate
(non-5xx share over the last interval, percent) >= min, and request-duration (p99 by
histogram_quantile over Istio's buckets, ms) <= max. A query with no data returns NaN, which
Flagger reports as "no values found" and counts as a failed check. failedChecks is never
reset during an analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vllm_canary.analysis.histogram import histogram_quantile

PROGRESSING, PROMOTED, ROLLED_BACK = 0, 1, 2


@dataclass(frozen=True)
class FlaggerSettings:
    """Flagger's Istio tutorial analysis (docs.flagger.app, "Istio Canary Deployments")."""

    interval_s: int = 60
    threshold: int = 5
    step_weight: int = 10
    max_weight: int = 50
    min_success_rate: float = 99.0
    max_p99_ms: float = 500.0


class FlaggerAnalysis:
    """Flagger's state per run: phase, canary weight, failed checks, decision time."""

    def __init__(self, runs: int, settings: FlaggerSettings | None = None) -> None:
        self.s = settings or FlaggerSettings()
        self.phase = np.full(runs, PROGRESSING)
        self.weight = np.full(runs, self.s.step_weight)  # the first tick routes stepWeight
        self.failed = np.zeros(runs, dtype=int)
        self.decided_at = np.full(runs, -1.0)

    def tick(self, t: float, requests: NDArray, errors: NDArray, bounds: NDArray,
             cumulative: NDArray) -> None:
        """One scheduler run at time t with the canary's counts over the last interval."""
        live = self.phase == PROGRESSING
        roll = live & (self.failed >= self.s.threshold)
        self.phase[roll] = ROLLED_BACK
        self.weight[roll] = 0
        self.decided_at[roll] = t
        live &= ~roll
        with np.errstate(invalid="ignore", divide="ignore"):
            success = 100.0 * (requests - errors) / requests
        p99 = histogram_quantile(0.99, bounds, cumulative)
        no_data = requests <= 0
        ok = ~no_data & (success >= self.s.min_success_rate) & ~(p99 > self.s.max_p99_ms)
        self.failed[live & ~ok] += 1
        advance = live & ok
        promote = advance & (self.weight >= self.s.max_weight)
        self.phase[promote] = PROMOTED
        self.weight[promote] = 100
        self.decided_at[promote] = t
        step = advance & ~promote
        self.weight[step] = np.minimum(self.weight[step] + self.s.step_weight, self.s.max_weight)
