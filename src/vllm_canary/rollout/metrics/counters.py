"""Per-target, per-series counter bookkeeping for direct scraping: what each series added since
the source's first poll, however pods come, go and restart (rate before sum, the rule of
prometheus/prometheus#13903, done here because no Prometheus does it for us).

Rules (the same as Prometheus' `increase()`, minus its extrapolation):
* a series' value that went down restarted at zero: its increase is the new value;
* a target (one /metrics URL) restarted when any of its series went down or any of its
  `*_created` timestamps changed: then every series of it counts from zero, because one
  process restarted (this also catches a restarted series that has already climbed above its
  old value, which the per-series rule alone would miss);
* a target that stops answering keeps what it had until its last scrape (it adds nothing
  more, and nothing is taken away);
* a series first seen after the first poll (a new pod, a new status code, a restarted pod)
  counts from zero: it did not exist at the previous poll, so all of its value is new. The
  exception is a series whose `*_created` timestamp says it existed before the first poll (a
  target that was merely unreachable then): its first value is history, not window.
* at the first poll every series starts at its own value, so a single snapshot still reads
  the processes' cumulative totals (history, from which the latency threshold is picked).

The counts that reach the analysis therefore equal what the processes counted, except the
requests a target counted between its last scrape and its death or restart: at most one
poll's worth of that target's traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_canary.rollout.metrics.samples import Sample

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
CREATED_SLACK_S = 1.0  # a `_created` this much before the first poll is history


def is_counter(name: str) -> bool:
    """Cumulative sample names in the text exposition (counters and histogram parts)."""
    return name.endswith(COUNTER_SUFFIXES)


def _key(name: str, labels: dict[str, str]) -> Key:
    return name, tuple(sorted(labels.items()))


def _created_key(name: str, labels: dict[str, str]) -> Key:
    """The `*_created` sample that dates a counter sample (prometheus_client's convention)."""
    for suffix in COUNTER_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            break
    else:
        base = name
    return _key(base + "_created", {k: v for k, v in labels.items() if k != "le"})


@dataclass
class _Target:
    last: dict[Key, float] = field(default_factory=dict)  # raw value at the last scrape
    total: dict[Key, float] = field(default_factory=dict)  # monotone: first value + increases
    created: dict[Key, float] = field(default_factory=dict)
    gauges: list[Sample] = field(default_factory=list)  # non-counters of the last scrape
    answered: bool = False  # answered at the latest round


class SeriesTracker:
    """Folds each round of scrapes (target -> samples, or None when it did not answer) into
    monotone per-series totals; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.targets: dict[str, _Target] = {}
        self.first_round_at: float | None = None

    def fold(self, round_: dict[str, list[Sample] | None], now: float) -> dict[str, list[Sample]]:
        """One poll. Returns, per target that ever answered, its counters' totals (value = its first
        value plus every increase since) and, when it answered now, its other samples."""
        first = self.first_round_at is None
        if first:
            self.first_round_at = now
        for name, samples in round_.items():
            if samples is None:
                if name in self.targets:
                    self.targets[name].answered = False
                continue
            target = self.targets.setdefault(name, _Target())
            target.answered = True
            self._update(target, samples, first)
        return {name: [(n, dict(lab), v) for (n, lab), v in t.total.items()]
                + (t.gauges if t.answered else []) for name, t in self.targets.items()}

    def _update(self, t: _Target, samples: list[Sample], first: bool) -> None:
        counters = {_key(n, lab): (n, lab, v) for n, lab, v in samples if is_counter(n)}
        created = {_key(n, lab): v for n, lab, v in samples if n.endswith("_created")}
        restarted = any(v < t.last[k] for k, (_, _, v) in counters.items() if k in t.last) or \
            any(created.get(k, c) != c for k, c in t.created.items())
        if restarted:  # every counter of the process began again at zero
            t.last = dict.fromkeys(t.last, 0.0)
            t.created = {}
        for k, (name, labels, value) in counters.items():
            if k in t.last:
                t.total[k] += value - t.last[k]
            elif first:
                t.total[k] = value  # the level at the first poll: history
            else:
                born = created.get(_created_key(name, labels))
                history = born is not None and self.first_round_at is not None and \
                    born < self.first_round_at - CREATED_SLACK_S
                t.total[k] = 0.0 if history else value
            t.last[k] = value
        t.created.update(created)
        t.gauges = [(n, lab, v) for n, lab, v in samples
                    if not is_counter(n) and not n.endswith("_created")]
