"""The controller as a state machine: the exact actuator calls it makes, what it persists,
and how it answers user requests, restarts and outages (fakes from tests/fixtures/rollout.py)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.fixtures.rollout import Clock, FakeActuator, FakeSource
from vllm_canary.rollout.controller import Controller
from vllm_canary.rollout.state import Phase, RolloutState, StateStore
from vllm_canary.rollout.strategy import parse_strategy

ISSUE = {
    "steps": [{"setWeight": 10}, {"analysis": {"duration": "10s"}}, {"setWeight": 50},
              {"analysis": {"duration": "10s"}}, {"setWeight": 100}],
    "analysis": {"metrics": ["error-rate", "latency-p95"], "alpha": 0.01, "interval": "1s",
                 "minSamples": 20},
}
TO_CANARY = [{"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100}]
BACK = {"v1": 100, "v2": 0}


def make(tmp_path: Path, clock: Clock, actuator: FakeActuator, source: FakeSource,
         strategy: dict | None = None, registry: CollectorRegistry | None = None) -> Controller:
    strat = parse_strategy(strategy or ISSUE)
    store = StateStore(tmp_path / "rollout.json")
    state = store.load() or RolloutState(strategy=strat.model_dump(by_alias=True), target={})
    return Controller(strat, state, store, actuator, source, now=clock, registry=registry)


def test_healthy_canary_is_promoted_through_the_steps(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act, error_rate={"v1": 0.01, "v2": 0.01}))
    assert ctl.run(sleep=clock.sleep) is Phase.PROMOTED
    assert act.sets() == TO_CANARY
    saved = StateStore(tmp_path / "rollout.json").load()
    assert saved is not None and saved.phase is Phase.PROMOTED and saved.weights == TO_CANARY[-1]
    assert [r["verdict"] for r in saved.results] == ["pass", "pass"]


def test_erroring_canary_is_aborted_and_traffic_goes_back(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act, error_rate={"v1": 0.0, "v2": 0.3}))
    assert ctl.run(sleep=clock.sleep) is Phase.ABORTED
    assert act.sets() == [TO_CANARY[0], BACK]
    assert any("error-rate" in e.message for e in ctl.state.events)


def test_slow_canary_is_aborted_on_latency(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    src = FakeSource(act, latency_factor={"v1": 1.0, "v2": 3.0})
    ctl = make(tmp_path, clock, act, src)
    assert ctl.run(sleep=clock.sleep) is Phase.ABORTED
    assert act.sets() == [TO_CANARY[0], BACK]
    assert any("latency-p95" in e.message for e in ctl.state.events)


def test_abort_retries_until_the_actuator_confirms(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act, error_rate={"v1": 0.0, "v2": 0.5}))
    ctl.tick()  # setWeight 10
    act.fail_next = 3
    phases = [ctl.tick() for _ in range(8)]
    assert phases[-1] is Phase.ABORTED
    assert act.sets()[-4:] == [BACK] * 4  # three refused, the fourth confirmed
    assert act.weights == BACK


def test_no_canary_traffic_is_inconclusive_then_paused_never_aborted(
        tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    src = FakeSource(act, rate=0)
    ctl = make(tmp_path, clock, act, src)
    phases = [ctl.tick() for _ in range(60) if not clock.sleep(1.0)]
    assert Phase.ABORTED not in phases
    assert phases[-1] is Phase.PAUSED and "inconclusive" in ctl.state.message
    assert act.sets() == [TO_CANARY[0]]


def test_metric_outage_is_no_data_not_a_failure(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    src = FakeSource(act, broken=True)
    ctl = make(tmp_path, clock, act, src)
    for _ in range(5):
        ctl.tick()
        clock.sleep(1)
    assert ctl.state.phase is Phase.ANALYZING
    assert "metrics unavailable" in ctl.state.source_error


def test_restarted_controller_resumes_mid_step(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    src = FakeSource(act, error_rate={"v1": 0.01, "v2": 0.01})
    first = make(tmp_path, clock, act, src)
    for _ in range(14):  # through setWeight 10 and into the 10s analysis... then "killed"
        first.tick()
        clock.sleep(1)
    step, started = first.state.step, first.state.step_started
    assert step >= 1
    second = make(tmp_path, clock, act, src)  # a new process reads the state file
    assert (second.state.step, second.state.step_started) == (step, started)
    assert second.analyzer.tests["error-rate"].requests_c == \
        first.analyzer.tests["error-rate"].requests_c
    assert second.run(sleep=clock.sleep) is Phase.PROMOTED
    assert act.sets() == TO_CANARY  # no step repeated or skipped


def test_user_abort_request_puts_traffic_back(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act))
    ctl.tick()
    ctl.store.request("abort")
    assert ctl.tick() is Phase.ABORTED
    assert act.sets() == [TO_CANARY[0], BACK]
    assert ctl.tick() is Phase.ABORTED and len(act.calls) == 2  # terminal: no more effects


def test_user_promote_skips_the_remaining_steps(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act))
    ctl.tick()
    ctl.store.request("promote")
    assert ctl.tick() is Phase.PROMOTED
    assert act.sets() == [TO_CANARY[0], TO_CANARY[-1]]


def test_pause_without_duration_waits_for_resume(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    strategy = {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}],
                "analysis": {"interval": "1s"}}
    ctl = make(tmp_path, clock, act, FakeSource(act), strategy)
    phases = [ctl.tick() for _ in range(5)]
    assert phases[-1] is Phase.PAUSED and act.sets() == [{"v1": 80, "v2": 20}]
    ctl.store.request("resume")
    ctl.tick()
    assert ctl.tick() is Phase.PROMOTED
    assert act.sets() == [{"v1": 80, "v2": 20}, {"v1": 0, "v2": 100}]


def test_phase_and_weight_are_exported_as_metrics(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    registry = CollectorRegistry()
    ctl = make(tmp_path, clock, act, FakeSource(act), registry=registry)
    ctl.tick()
    ctl.tick()
    assert registry.get_sample_value("vllm_canary_rollout_canary_weight") == 10
    assert registry.get_sample_value("vllm_canary_rollout_phase", {"phase": "Analyzing"}) == 1
    assert registry.get_sample_value("vllm_canary_rollout_phase", {"phase": "Aborted"}) == 0


def test_canary_down_for_longer_than_down_after_aborts(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    src = FakeSource(act)
    ctl = make(tmp_path, clock, act, src)
    ctl.tick()
    clock.sleep(1)
    src.canary_down = True
    phases = []
    for _ in range(30):
        phases.append(ctl.tick())
        clock.sleep(1)
        if phases[-1] is Phase.ABORTED:
            break
    assert phases[-1] is Phase.ABORTED and len(phases) >= 15  # downAfter: 15s by default
    assert act.sets() == [TO_CANARY[0], BACK]
    assert any("v2 is down" in e.message for e in ctl.state.events)


def test_tolerance_makes_the_last_gate_wait_for_evidence(tmp_path: Path, clock: Clock) -> None:
    strategy = {**ISSUE, "analysis": {**ISSUE["analysis"], "tolerance": 2.0,
                                      "metrics": ["error-rate"], "timeoutFactor": 100}}
    act = FakeActuator()
    src = FakeSource(act, rate=100, error_rate={"v1": 0.05, "v2": 0.05})
    ctl = make(tmp_path, clock, act, src, strategy)
    at_gate = []
    while ctl.tick() not in (Phase.PROMOTED, Phase.ABORTED, Phase.PAUSED):
        clock.sleep(1)
        at_gate.append(ctl.state.message)
    assert ctl.state.phase is Phase.PROMOTED and act.sets() == TO_CANARY
    assert any("not yet shown within 2x" in r for r in at_gate)


def test_custom_promql_runs_at_the_gates_only(tmp_path: Path, clock: Clock) -> None:
    """Every poll checks the sequential tests; a custom metric's PromQL is queried only when
    a gate decides (twice: canary and baseline), not at every tick."""
    asked: list[str] = []

    def query(expr: str) -> float:
        asked.append(expr)
        return 1.0

    strategy = {**ISSUE, "analysis": {**ISSUE["analysis"], "metrics": [
        "error-rate", {"name": "gpu", "query": 'avg(x{version="$version"})'}]}}
    act = FakeActuator()
    strat = parse_strategy(strategy)
    store = StateStore(tmp_path / "rollout.json")
    state = RolloutState(strategy=strat.model_dump(by_alias=True), target={})
    ctl = Controller(strat, state, store, act, FakeSource(act), query=query, now=clock)
    ticks = 0
    while not ctl.tick().terminal:
        ticks += 1
        clock.sleep(1.0)
    assert ctl.state.phase is Phase.PROMOTED
    assert len(asked) == 2 * 2 and ticks > 2 * 10  # two gates, about ten ticks each


def test_verdicts_shown_belong_to_the_current_gate(tmp_path: Path, clock: Clock) -> None:
    """While the second analysis step runs, the live view must not show the first gate's
    verdicts as if they were this step's."""
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, FakeSource(act))
    seen = []
    while not ctl.tick().terminal:
        seen.append((ctl.state.step, ctl.state.phase, len(ctl.state.results)))
        clock.sleep(1.0)
    assert any(step == 3 and phase is Phase.ANALYZING for step, phase, _ in seen)
    assert all(n == 0 for step, phase, n in seen if step == 3 and phase is Phase.ANALYZING)
    assert [r["verdict"] for r in ctl.state.results] == ["pass", "pass"]
