"""The rollout controller: a state machine (Progressing, Analyzing, Paused, Promoted, Aborted)
driven by `tick()`. Every tick reads user requests, polls telemetry into the sequential tests,
takes at most one step, and persists the state; its effects are the actuator calls it makes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from vllm_canary.analysis.verdict import MetricResult, Verdict, combine
from vllm_canary.rollout.actuators.base import Actuator, ActuatorError
from vllm_canary.rollout.analyzer import Analyzer, Query
from vllm_canary.rollout.metrics.base import MetricSource, Snapshot, VersionStats, window
from vllm_canary.rollout.shadow import ShadowAnalysis, gate_results
from vllm_canary.rollout.state import Event, Phase, RolloutState, StateStore
from vllm_canary.rollout.strategy import Strategy

ABORT_GIVE_UP_S = 600.0  # keep retrying the abort this long before reporting failure


class Controller:
    def __init__(self, strategy: Strategy, state: RolloutState, store: StateStore,
                 actuator: Actuator, source: MetricSource, *, query: Query | None = None,
                 now: Callable[[], float] = time.time,
                 registry: CollectorRegistry | None = None) -> None:
        self.strategy, self.state, self.store = strategy, state, store
        self.actuator, self.source, self.now = actuator, source, now
        self.stable, self.canary = strategy.stable, strategy.canary
        self.analyzer = Analyzer(strategy.analysis, self.stable, self.canary, query,
                                 state.analysis or None)
        # Dark launch (setMirror): the canary's shadow answers vs the stable's served ones.
        self.shadow = ShadowAnalysis(strategy.analysis, self.stable, self.canary, source,
                                     state.shadow or None)
        self.abort_since: float | None = None
        self.polled = False  # this controller's source has answered once
        self.registry = registry = registry or CollectorRegistry()
        self.g_phase = Gauge("vllm_canary_rollout_phase", "1 for the rollout's current phase",
                             ["phase"], registry=registry)
        self.g_weight = Gauge("vllm_canary_rollout_canary_weight",
                              "Percent of traffic on the canary", registry=registry)
        self.g_step = Gauge("vllm_canary_rollout_step", "Index of the current step",
                            registry=registry)
        self.g_mirror = Gauge("vllm_canary_rollout_mirror_percent",
                              "Percent of traffic mirrored to the canary (dark launch)",
                              registry=registry)

    # ---- transitions -------------------------------------------------------------------
    def tick(self) -> Phase:
        """One pass of the state machine; returns the phase after it."""
        s = self.state
        request = self.store.take_request()
        if not s.phase.terminal or s.aborting:
            if request == "abort":
                self._abort("aborted by user")
            elif request == "promote" and not s.aborting:
                self._promote("promoted by user")
            elif request == "resume" and s.phase is Phase.PAUSED:
                self._next_step("resumed by user")
        if s.aborting:
            self._confirm_abort()
        elif not s.phase.terminal:
            self._poll()
            if not s.aborting:
                self._advance()
            if s.aborting:
                self._confirm_abort()
        self._export()
        self.store.save(s)
        return s.phase

    def _advance(self) -> None:
        s = self.state
        steps = self.strategy.steps
        if s.step >= len(steps):
            self._promote("all steps done")
            return
        if s.step_started is None:
            s.step_started = self.now()
            self.analyzer.start_step()
            self.shadow.start_step()
        step = steps[s.step]
        elapsed = self.now() - s.step_started
        if step.kind == "setWeight":
            w = int(step.set_weight or 0)
            if self._route({self.stable: 100 - w, self.canary: w}):
                self._next_step(f"canary weight {w}%")
        elif step.kind == "setMirror":
            pct = float(step.set_mirror or 0)
            if self._mirror(pct):
                self._next_step(f"mirroring {pct:g}% of traffic to {self.canary}" if pct
                                else f"mirror to {self.canary} removed")
        elif step.kind == "pause":
            s.phase = Phase.PAUSED
            duration = step.pause.duration if step.pause else None
            if duration is not None and elapsed >= duration:
                self._next_step("pause over")
            else:
                s.message = ("paused until `vllm-canary rollout resume`" if duration is None
                             else f"paused {elapsed:.0f}/{duration:.0f}s")
        elif s.phase is not Phase.PAUSED:  # an analysis step; Paused here = inconclusive
            s.phase = Phase.ANALYZING
            duration = step.analysis.duration if step.analysis and step.analysis.duration else 0.0
            if elapsed < duration:
                s.message = f"analysing {elapsed:.0f}/{duration:.0f}s"
                s.results = []  # the previous gate's verdicts are not this step's
                return
            final = not any(st.kind == "analysis" for st in steps[s.step + 1:])
            self.analyzer.agreement_since = s.mirror_since
            results = gate_results(self.analyzer.results(final_gate=final),
                                   self.shadow.sequential_results(),
                                   s.weights.get(self.canary, 0), s.mirror)
            s.results = [r.to_dict() for r in results]
            verdict = combine(results)
            if verdict is Verdict.FAIL:
                self._abort(_reasons(results, Verdict.FAIL))
            elif verdict is Verdict.PASS:
                self._next_step("analysis passed")
            elif elapsed >= duration * self.strategy.analysis.timeout_factor and duration > 0:
                s.phase = Phase.PAUSED
                s.message = ("inconclusive (" + _reasons(results, Verdict.INCONCLUSIVE) +
                             "): `vllm-canary rollout resume` to go on, or `abort`")
                self._event(s.message)
            else:
                s.message = "waiting for data: " + _reasons(results, Verdict.INCONCLUSIVE)

    def _poll(self) -> None:
        """Feed the window since the last poll to the tests; a regression aborts at once."""
        s = self.state
        try:
            current = self.source.snapshot()
        except Exception as exc:  # a metric source outage is "no data", never a failure
            s.source_error = f"metrics unavailable: {exc}"
            return
        s.source_error = ""
        # A source's counts start at its own first poll (metrics/base.py), so this
        # controller's first snapshot (a fresh source, e.g. after a restart) is differenced
        # with nothing: the persisted one came from another source's life.
        previous = _load_snapshot(s.last_snapshot) if self.polled else None
        self.polled = True
        if previous is not None and s.weights.get(self.canary, 0) > 0:
            self.analyzer.observe(window(previous, current, count_new=True), current)
        s.last_snapshot = {v: st.to_dict() for v, st in current.items()}
        canary = current.get(self.canary)
        exposed = s.weights.get(self.canary, 0) > 0 or s.mirror > 0  # serving or shadowing
        if canary is not None and canary.up is False and exposed:
            s.canary_down_since = s.canary_down_since or self.now()
            down_for = self.now() - s.canary_down_since
            if down_for >= self.strategy.analysis.down_after:
                self._abort(f"{self.canary} is down (no healthy endpoint for {down_for:.0f}s)")
                return
        else:
            s.canary_down_since = None
        self.shadow.poll(active=s.mirror > 0)
        s.shadow = self.shadow.to_dict()
        results = self.analyzer.sequential_results()
        if s.mirror > 0:
            results += self.shadow.sequential_results()
        s.analysis = self.analyzer.to_dict()
        if any(r.verdict is Verdict.FAIL for r in results):
            s.results = [r.to_dict() for r in results]
            self._abort(_reasons(results, Verdict.FAIL))

    def _next_step(self, message: str) -> None:
        s = self.state
        s.step += 1
        s.step_started = self.now()
        s.phase = Phase.PROGRESSING
        self.analyzer.start_step()
        self.shadow.start_step()
        s.analysis = self.analyzer.to_dict()
        self._event(message)

    def _promote(self, message: str) -> None:
        target = {self.stable: 0, self.canary: 100}
        if (self.state.weights == target or self._route(target)) and self._mirror(0):
            self.state.phase = Phase.PROMOTED
            self.state.step = len(self.strategy.steps)
            self._event(message)

    def _abort(self, reason: str) -> None:
        s = self.state
        if not s.aborting:
            s.aborting = True
            s.message = f"aborting: {reason}"
            self._event(s.message)

    def _confirm_abort(self) -> None:
        """Put all traffic back on the stable version; done only once the target confirms."""
        s = self.state
        self.abort_since = self.abort_since or self.now()
        # Aborting a dark launch also removes the mirror: the canary gets nothing at all.
        if self._route({self.stable: 100, self.canary: 0}) and self._mirror(0):
            s.aborting = False
            s.phase = Phase.ABORTED
            self._event("traffic back on " + self.stable)

    def _route(self, weights: dict[str, int]) -> bool:
        s = self.state
        try:
            confirmed = self.actuator.set_weights(weights)
        except ActuatorError as exc:
            s.message = f"could not set weights {weights}: {exc} (retrying)"
            return False
        if {k: confirmed.get(k, 0) for k in weights} != weights:
            s.message = f"target answered {confirmed}, wanted {weights} (retrying)"
            return False
        s.weights = dict(weights)
        return True

    def _mirror(self, percent: float) -> bool:
        """Mirror `percent`% to the canary (0: none); done once the target confirms."""
        s = self.state
        if percent == s.mirror:
            return True
        set_mirror = getattr(self.actuator, "set_mirror", None)
        if set_mirror is None:
            s.message = f"{self.actuator.describe()} cannot mirror traffic (setMirror)"
            return False
        try:
            confirmed = set_mirror(percent, self.canary)
        except ActuatorError as exc:
            s.message = f"could not set the mirror to {percent:g}%: {exc} (retrying)"
            return False
        if abs(confirmed - percent) > 1e-6:
            s.message = f"target mirrors {confirmed:g}%, wanted {percent:g}% (retrying)"
            return False
        s.mirror = percent
        s.mirror_since = self.now() if percent > 0 else None
        return True

    def _event(self, message: str) -> None:
        s = self.state
        s.message = message
        s.events.append(Event(at=self.now(), phase=s.phase, step=s.step, message=message))

    def _export(self) -> None:
        for p in Phase:
            self.g_phase.labels(phase=p.value).set(1 if p is self.state.phase else 0)
        self.g_weight.set(self.state.weights.get(self.canary, 0))
        self.g_step.set(self.state.step)
        self.g_mirror.set(self.state.mirror)

    # ---- the loop ----------------------------------------------------------------------
    def run(self, sleep: Callable[[float], None] = time.sleep,
            on_tick: Callable[[RolloutState], None] | None = None,
            max_seconds: float = 7 * 24 * 3600.0) -> Phase:
        """Tick every analysis interval until Promoted or Aborted (bounded by max_seconds)."""
        self.state.controller_pid = os.getpid()
        deadline = self.now() + max_seconds
        while True:
            phase = self.tick()
            if on_tick:
                on_tick(self.state)
            if phase.terminal and not self.state.aborting:
                return phase
            gave_up = self.abort_since is not None and (
                self.now() - self.abort_since > ABORT_GIVE_UP_S)
            if self.now() >= deadline or gave_up:
                return phase
            sleep(self.strategy.analysis.interval)


def _reasons(results: list[MetricResult], verdict: Verdict) -> str:
    return "; ".join(f"{r.metric}: {r.reason}" for r in results if r.verdict is verdict)


def _load_snapshot(data: dict | None) -> Snapshot | None:
    if not data:
        return None
    return {v: VersionStats.from_dict(d) for v, d in data.items()}
