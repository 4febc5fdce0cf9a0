"""The dark-launch step of the rollout: the exact actuator calls of a `setMirror` rollout
(abort and promote remove the mirror), the shadow analysis deciding while the canary serves
nothing, and the Kubernetes patch of `mirror` + `mirrorPercentage` equal to the chart's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.fixtures.k8s import ROOT, find
from tests.fixtures.rollout import BOUNDS, Clock, FakeActuator, FakeSource
from vllm_canary.errors import UserError
from vllm_canary.rollout.actuators.kubernetes import mirror_percent, weighted_route, with_mirror
from vllm_canary.rollout.controller import Controller
from vllm_canary.rollout.metrics.base import Histogram, Snapshot, VersionStats
from vllm_canary.rollout.state import Phase, RolloutState, StateStore
from vllm_canary.rollout.strategy import parse_strategy

DARK = {
    "steps": [{"setWeight": 0}, {"setMirror": 100}, {"analysis": {"duration": "10s"}},
              {"setWeight": 10}],
    "analysis": {"metrics": ["error-rate", "latency-p95"], "interval": "1s", "minSamples": 20},
}


@dataclass
class MirroringActuator(FakeActuator):
    mirrors: list[float] = field(default_factory=list)

    def set_mirror(self, percent: float, subset: str) -> float:
        assert subset == "v2"
        self.calls.append(("mirror", {"percent": percent}))  # type: ignore[dict-item]
        self.mirrors.append(percent)
        return percent


@dataclass
class FakeShadowReader:
    """Served v1 and shadow v2 series: every poll adds `rate` requests to both."""

    error_rate: float
    rate: int = 40
    totals: dict[str, VersionStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(3)
        for role in ("served", "shadow"):
            self.totals[role] = VersionStats(0, 0, {"latency": Histogram(BOUNDS, [0.0] * 7)})
        self._add("served", 400, 0.0)

    def _add(self, role: str, n: int, errors: float) -> None:
        st = self.totals[role]
        st.requests += n
        st.errors += float(self.rng.binomial(n, errors))
        lat = self.rng.lognormal(np.log(120), 0.5, n)
        cum = [float((lat <= b).sum()) for b in BOUNDS] + [float(n)]
        h = st.histograms["latency"]
        h.cumulative = [a + b for a, b in zip(h.cumulative, cum, strict=True)]

    def snapshot(self) -> Snapshot:
        self._add("served", self.rate, 0.0)
        self._add("shadow", self.rate, self.error_rate)
        return {k: VersionStats.from_dict(v.to_dict()) for k, v in self.totals.items()}


def make(tmp_path: Path, clock: Clock, act: FakeActuator, shadow_errors: float) -> Controller:
    strat = parse_strategy(DARK)
    store = StateStore(tmp_path / "rollout.json")
    state = RolloutState(strategy=strat.model_dump(by_alias=True), target={})
    ctl = Controller(strat, state, store, act, FakeSource(act), now=clock)
    ctl.shadow.reader = FakeShadowReader(shadow_errors)  # type: ignore[assignment]
    return ctl


def test_erroring_shadow_aborts_in_the_dark_and_removes_the_mirror(tmp_path: Path,
                                                                   clock: Clock) -> None:
    act = MirroringActuator()
    ctl = make(tmp_path, clock, act, shadow_errors=0.3)
    assert ctl.run(sleep=clock.sleep) is Phase.ABORTED
    assert act.calls == [("set", {"v1": 100, "v2": 0}), ("mirror", {"percent": 100.0}),
                         ("set", {"v1": 100, "v2": 0}), ("mirror", {"percent": 0.0})]
    saved = StateStore(tmp_path / "rollout.json").load()
    assert saved is not None and saved.step == 2 and saved.mirror == 0
    assert "shadow-error-rate" in saved.events[-2].message


def test_healthy_shadow_passes_then_weight_then_promote_without_mirror(tmp_path: Path,
                                                                        clock: Clock) -> None:
    act = MirroringActuator()
    ctl = make(tmp_path, clock, act, shadow_errors=0.0)
    assert ctl.run(sleep=clock.sleep) is Phase.PROMOTED
    assert act.calls == [("set", {"v1": 100, "v2": 0}), ("mirror", {"percent": 100.0}),
                         ("set", {"v1": 90, "v2": 10}), ("set", {"v1": 0, "v2": 100}),
                         ("mirror", {"percent": 0.0})]
    saved = StateStore(tmp_path / "rollout.json").load()
    assert saved is not None
    gate = [e.message for e in saved.events]
    assert "analysis passed" in gate


def test_an_actuator_that_cannot_mirror_says_so_and_waits(tmp_path: Path, clock: Clock) -> None:
    act = FakeActuator()
    ctl = make(tmp_path, clock, act, shadow_errors=0.0)
    for _ in range(3):
        ctl.tick()
    assert ctl.state.step == 1 and "cannot mirror" in ctl.state.message


@pytest.mark.parametrize("step", [{"setMirror": 101}, {"setMirror": 50, "setWeight": 10}])
def test_bad_set_mirror_steps_are_one_line_errors(step: dict) -> None:
    with pytest.raises(UserError):
        parse_strategy({"steps": [step]})


def test_kubernetes_patch_of_the_mirror_is_what_the_chart_renders(render) -> None:
    plain = find(render().manifests, "VirtualService", "vllm")["spec"]["http"]
    mirrored = find(render({"routing": {"mirror": {"enabled": True, "percentage": 25}}})
                    .manifests, "VirtualService", "vllm")["spec"]["http"]
    assert with_mirror(plain, "v2", 25) == mirrored
    assert with_mirror(mirrored, "v2", 0) == plain
    assert mirror_percent(weighted_route(mirrored)) == 25.0


def test_istio_install_file_keeps_the_shadow_suffix() -> None:
    operator = yaml.safe_load((ROOT / "k8s" / "istio-demo.yaml").read_text())
    assert operator["spec"]["values"]["pilot"]["env"]["DISABLE_SHADOW_HOST_SUFFIX"] == "false"
