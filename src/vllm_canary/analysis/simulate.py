"""A trace simulator for canary experiments, vectorised over runs: request arrivals with rate
noise and quiet periods, per-version error rates and latency distributions, and load spikes
that slow both versions alike. Methods under test call `serve()` once per simulated second
with their own canary weights; arrivals and load are the same for every method (same seed)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr  # the normal CDF, without importing all of scipy.stats

from vllm_canary.analysis.histogram import ISTIO_MS_BUCKETS


@dataclass(frozen=True)
class Scenario:
    """What the two versions do. Latency is log-normal (median_ms, sigma) times a shared load
    factor; the canary's latencies are multiplied by `latency_factor`."""

    name: str
    rate: float = 20.0  # requests per second, both versions together
    error_rate: float = 0.01
    canary_error_rate: float = 0.01
    median_ms: float = 120.0
    sigma: float = 0.5
    latency_factor: float = 1.0
    rate_noise: float = 0.2  # std of the per-minute multiplicative rate wobble
    load_noise: float = 0.1  # std of log of the shared per-minute latency factor
    quiet_share: float = 0.0  # share of runs with a quiet period (no traffic)
    quiet_s: tuple[int, int] = (60, 240)  # its length range, seconds


@dataclass
class Window:
    """One second of traffic per run: requests, errors and latency histograms per version."""

    n_c: NDArray
    n_b: NDArray
    err_c: NDArray
    err_b: NDArray
    hist_c: NDArray  # (runs, buckets+1) per-bucket counts, last = +Inf
    hist_b: NDArray


class TraceSim:
    """The traces of `runs` runs of one scenario over `seconds` seconds."""

    bounds = np.asarray(ISTIO_MS_BUCKETS, dtype=float)

    def __init__(self, scenario: Scenario, runs: int, seconds: int, seed: int) -> None:
        self.sc = scenario
        self.runs = runs
        rng = np.random.default_rng(seed)
        minutes = seconds // 60 + 2
        wobble = np.exp(rng.normal(0, scenario.rate_noise, (runs, minutes)))
        rate = np.repeat(scenario.rate * wobble, 60, axis=1)[:, :seconds]
        quiet = rng.random(runs) < scenario.quiet_share
        start = rng.integers(0, min(seconds, 300), runs)
        length = rng.integers(scenario.quiet_s[0], scenario.quiet_s[1] + 1, runs)
        t = np.arange(seconds)
        off = quiet[:, None] & (t >= start[:, None]) & (t < (start + length)[:, None])
        rate[off] = 0.0
        self.arrivals = rng.poisson(rate)
        self.load = np.repeat(rng.normal(0, scenario.load_noise, (runs, minutes)), 60,
                              axis=1)[:, :seconds]
        self.seed = seed

    def rng_for(self, method: str) -> np.random.Generator:
        """Outcomes are drawn per method from the same seed (arrivals are shared exactly)."""
        return np.random.default_rng([self.seed, zlib.crc32(method.encode())])

    def bucket_probs(self, t: int, factor: float) -> NDArray:
        """Per-bucket probabilities (runs, buckets+1) of a latency at second t."""
        mu = np.log(self.sc.median_ms * factor) + self.load[:, t]
        cdf = ndtr((np.log(self.bounds)[None, :] - mu[:, None]) / self.sc.sigma)
        cdf = np.concatenate([cdf, np.ones((self.runs, 1))], axis=1)
        return np.diff(cdf, prepend=0.0, axis=1).clip(0.0, 1.0)

    def serve(self, t: int, weight_pct: NDArray, rng: np.random.Generator) -> Window:
        """Route second t's arrivals with each run's canary weight (percent) and draw outcomes."""
        n = self.arrivals[:, t]
        n_c = rng.binomial(n, np.clip(weight_pct, 0, 100) / 100.0)
        n_b = n - n_c
        hist_c = rng.multinomial(n_c, self.bucket_probs(t, self.sc.latency_factor))
        hist_b = rng.multinomial(n_b, self.bucket_probs(t, 1.0))
        return Window(n_c, n_b, rng.binomial(n_c, self.sc.canary_error_rate),
                      rng.binomial(n_b, self.sc.error_rate), hist_c, hist_b)
