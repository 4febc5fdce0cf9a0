"""What a metric source gives the controller: cumulative per-version counters and histograms
at one instant. Windows are differences of two snapshots, so Prometheus and direct scraping
go through the same analysis.

A source builds its per-version counts from per-series increases (rate before sum,
prometheus/prometheus#13903): the level at its first poll plus what every series added since,
a restarted series counting from zero and a departed one keeping what it had. So within one
source's life a version's counts never go down, whatever the pods do; see counters.py
(direct scrape) and prometheus.py (`increase()`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

HISTOGRAMS = ("latency", "ttft", "itl")  # end-to-end ms, time to first token s, inter-token s


@dataclass
class Histogram:
    bounds: list[float]  # finite upper bounds, ascending
    cumulative: list[float]  # one per bound plus +Inf (Prometheus `le` semantics)

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, older: Histogram | None) -> Histogram:
        """The window between `older` and this one; a counter reset (restart) keeps self."""
        if older is None or older.bounds != self.bounds:
            return self
        diff = [a - b for a, b in zip(self.cumulative, older.cumulative, strict=True)]
        return self if any(d < 0 for d in diff) else Histogram(self.bounds, diff)


@dataclass
class VersionStats:
    requests: float = 0.0
    errors: float = 0.0  # 5xx (and connection failures the gateway reports as 5xx)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    up: bool | None = None  # False when the version is known to be down (health, scrape)

    def minus(self, older: VersionStats | None) -> VersionStats:
        if older is None:
            return self
        if self.requests < older.requests or self.errors < older.errors:
            # Only across two sources' lives (a restarted controller's fresh source starts at
            # its own first poll): take what the new one has counted.
            return self
        return VersionStats(
            self.requests - older.requests, self.errors - older.errors,
            {k: h.minus(older.histograms.get(k)) for k, h in self.histograms.items()},
            self.up,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "up": self.up,
                "histograms": {k: [h.bounds, h.cumulative] for k, h in self.histograms.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionStats:
        return cls(d["requests"], d["errors"],
                   {k: Histogram(list(b), list(c)) for k, (b, c) in d["histograms"].items()},
                   d.get("up"))


Snapshot = dict[str, VersionStats]  # by version: v1, v2


def window(previous: Snapshot, current: Snapshot, count_new: bool = False) -> Snapshot:
    """What each version did between two snapshots of one source.

    A version new in `current` is left out unless `count_new`; with it, it counts in full,
    which is right for the sources here: their counts start at their first poll (the history
    read then is in `previous`; series born later count from zero), so all of a new version's
    counts are new, e.g. v2's first requests once its weight leaves 0."""
    return {v: st.minus(previous.get(v)) for v, st in current.items()
            if count_new or v in previous}


class MetricSource(Protocol):
    """Per-version cumulative telemetry (plugin kind; one file per implementation)."""

    def snapshot(self) -> Snapshot:
        """Cumulative counts now; a version that cannot be read is simply absent."""
        ...

    def describe(self) -> str:
        """One line for the live view, e.g. 'prometheus http://127.0.0.1:9090'."""
        ...
