"""Our rollout's decision rule, vectorised over simulated runs for the benchmark: the same
sequential tests the controller runs (error rate, and exceedances of the baseline's p95
bucket), Bonferroni-split alpha, Argo-like steps, and "too little data" meaning wait."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vllm_canary.analysis.histogram import exceedances, pick_threshold
from vllm_canary.analysis.sequential import delta_grid, log_lr_increment, log_mixture

PROGRESSING, PROMOTED, ABORTED, PAUSED = 0, 1, 2, 3


class SequentialRollout:
    """Runs `steps` = [(weight %, analysis seconds), ...]; the last weight is 100 (promote)."""

    def __init__(self, runs: int, steps: list[tuple[int, int]], alpha: float = 0.01,
                 margin: float = 0.0, quantile: float = 0.95, min_samples: int = 50,
                 timeout_factor: float = 3.0, tolerance: float | None = None) -> None:
        self.steps = steps
        self.alpha_each = alpha / 2  # two metrics: error-rate and latency-p95
        self.delta0 = 1.0 + margin
        self.grid = delta_grid(self.delta0)
        self.tolerance = tolerance
        self.grid_within = delta_grid(tolerance or 2.0, direction="within")
        # the promotion gate: the last step that analyses (a non-final step with a duration)
        self.final_step = max((i for i, s in enumerate(steps[:-1]) if s[1] > 0), default=-1)
        self.quantile = quantile
        self.min_samples = min_samples
        self.timeout_factor = timeout_factor
        self.phase = np.full(runs, PROGRESSING)
        self.step = np.zeros(runs, dtype=int)
        self.step_started = np.zeros(runs)
        self.step_requests = np.zeros(runs)
        self.llr_err = np.zeros((runs, len(self.grid)))
        self.llr_lat = np.zeros((runs, len(self.grid)))
        self.within_err = np.zeros((runs, len(self.grid)))
        self.within_lat = np.zeros((runs, len(self.grid)))
        self.threshold: NDArray = np.full(runs, np.nan)
        self.decided_at = np.full(runs, -1.0)
        self.aborted_by = np.full(runs, "", dtype=object)

    def weight(self) -> NDArray:
        w = np.array([s[0] for s in self.steps])[np.minimum(self.step, len(self.steps) - 1)]
        return np.where(self.phase == ABORTED, 0, np.where(self.phase == PROMOTED, 100, w))

    def warm_up(self, bounds: NDArray, baseline_hist: NDArray) -> None:
        """Pick each run's latency threshold from baseline traffic seen before the rollout."""
        cum = np.cumsum(baseline_hist, axis=1)
        self.threshold = np.array([pick_threshold(bounds, c, self.quantile) or np.nan
                                   for c in cum])

    def observe(self, t: float, bounds: NDArray, n_c: NDArray, n_b: NDArray, err_c: NDArray,
                err_b: NDArray, hist_c: NDArray, hist_b: NDArray) -> None:
        """One window of data (counts since the previous call), then advance the state."""
        live = self.phase == PROGRESSING
        self.llr_err += np.where(live[:, None], log_lr_increment(
            err_c, err_b, n_c, n_b, self.grid, self.delta0), 0.0)
        cum_c, cum_b = np.cumsum(hist_c, axis=1), np.cumsum(hist_b, axis=1)
        exc_c = np.zeros(len(n_c))
        exc_b = np.zeros(len(n_b))
        for tau in np.unique(self.threshold[~np.isnan(self.threshold)]):
            rows = self.threshold == tau
            exc_c[rows] = exceedances(bounds, cum_c[rows], tau)
            exc_b[rows] = exceedances(bounds, cum_b[rows], tau)
        self.llr_lat += np.where(live[:, None], log_lr_increment(
            exc_c, exc_b, n_c, n_b, self.grid, self.delta0), 0.0)
        if self.tolerance:
            tol = self.tolerance
            self.within_err += np.where(live[:, None], log_lr_increment(
                err_c, err_b, n_c, n_b, self.grid_within, tol), 0.0)
            self.within_lat += np.where(live[:, None], log_lr_increment(
                exc_c, exc_b, n_c, n_b, self.grid_within, tol), 0.0)
        bar = np.log(1.0 / self.alpha_each)
        fail_err = log_mixture(self.llr_err) >= bar
        fail_lat = log_mixture(self.llr_lat) >= bar
        abort = live & (fail_err | fail_lat)
        self.phase[abort] = ABORTED
        self.decided_at[abort] = t
        self.aborted_by[abort & fail_err] = "error-rate"
        self.aborted_by[abort & ~fail_err & fail_lat] = "latency-p95"
        live &= ~abort
        self.step_requests += np.where(live, n_c, 0)
        durations = np.array([s[1] for s in self.steps])[np.minimum(self.step, len(self.steps) - 1)]
        elapsed = t - self.step_started
        done = live & (elapsed >= durations) & (self.step_requests >= self.min_samples)
        if self.tolerance:
            shown = (log_mixture(self.within_err) >= bar) & (log_mixture(self.within_lat) >= bar)
            done &= (self.step != self.final_step) | shown
        stuck = live & ~done & (elapsed >= self.timeout_factor * durations)
        self.phase[stuck] = PAUSED
        self.decided_at[stuck] = t
        self.step[done] += 1
        self.step_started[done] = t
        self.step_requests[done] = 0
        last = done & (self.step >= len(self.steps) - 1)
        self.phase[last] = PROMOTED
        self.decided_at[last] = t
