"""Cumulative histograms as Prometheus stores them, and `histogram_quantile` with its exact
interpolation rules (so Flagger's p99 check is reproduced, not approximated)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Istio's default buckets for istio_request_duration_milliseconds (upper bounds, ms).
ISTIO_MS_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                    30000, 60000, 300000, 600000, 1800000, 3600000)


def histogram_quantile(q: float, bounds: NDArray, cumulative: NDArray) -> NDArray:
    """Prometheus' histogram_quantile over the last axis; NaN where the histogram is empty.

    `bounds` are the finite upper bounds (ascending); `cumulative` has one more column, the
    +Inf bucket. Within a bucket the rank is interpolated linearly; the lowest bucket starts
    at 0; a rank in the +Inf bucket returns the largest finite bound.
    """
    cum = np.asarray(cumulative, dtype=float)
    total = cum[..., -1]
    rank = q * total
    idx = np.argmax(cum >= rank[..., None], axis=-1)
    upper_all = np.append(np.asarray(bounds, dtype=float), np.inf)
    lower_all = np.concatenate([[0.0], np.asarray(bounds, dtype=float)])
    upper = upper_all[idx]
    lower = lower_all[idx]
    count_below = np.where(idx > 0, np.take_along_axis(
        cum, np.maximum(idx - 1, 0)[..., None], axis=-1)[..., 0], 0.0)
    count_in = np.take_along_axis(cum, idx[..., None], axis=-1)[..., 0] - count_below
    with np.errstate(invalid="ignore", divide="ignore"):
        value = lower + (upper - lower) * (rank - count_below) / count_in
    value = np.where(np.isinf(upper), bounds[-1], value)
    return np.where(total > 0, value, np.nan)


def exceedances(bounds: NDArray, cumulative: NDArray, threshold: float) -> NDArray:
    """How many observations were above `threshold`, which must be one of `bounds`."""
    i = int(np.searchsorted(np.asarray(bounds, dtype=float), threshold))
    cum = np.asarray(cumulative)
    return cum[..., -1] - cum[..., i]


def pick_threshold(bounds: NDArray, cumulative: NDArray, q: float) -> float | None:
    """The bucket bound whose exceedance share in a baseline histogram is closest (in log
    scale) to 1 - q, i.e. the baseline's q-quantile rounded to a bucket; None if empty."""
    cum = np.asarray(cumulative, dtype=float)
    total = cum[-1]
    if total <= 0:
        return None
    share = (total - cum[:-1]) / total
    ok = share > 0
    if not ok.any():
        return None
    dist = np.where(ok, np.abs(np.log(np.where(ok, share, 1.0) / (1.0 - q))), np.inf)
    return float(np.asarray(bounds, dtype=float)[int(np.argmin(dist))])
