"""Weights are relative everywhere (Istio >= 1.15, istio/istio#36069, PR #39544): the pure
percentages helper, the Kubernetes actuator's reading of a VirtualService, the rollout state."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_canary.gateway.routing import percentages
from vllm_canary.rollout.actuators.kubernetes import KubernetesActuator, shares
from vllm_canary.rollout.state import RolloutState


@pytest.mark.parametrize(("weights", "expected"), [
    ({"v1": 1, "v2": 1}, {"v1": 50, "v2": 50}),
    ({"v1": 300, "v2": 100}, {"v1": 75, "v2": 25}),
    ({"v1": 90, "v2": 10}, {"v1": 90, "v2": 10}),
    ({"v1": 1, "v2": 2}, {"v1": 33.33, "v2": 66.67}),
    ({"v1": 0, "v2": 5}, {"v1": 0, "v2": 100}),
    ({"v1": 0}, {"v1": 100}),  # a lone destination takes everything, whatever its weight
])
def test_percentages(weights: dict[str, int], expected: dict[str, float]) -> None:
    assert percentages(weights) == expected
    assert all(isinstance(v, int) for k, v in percentages(weights).items()
               if float(expected[k]).is_integer())


def _vs(w1: int, w2: int) -> dict[str, Any]:
    host = "vllm-service.default.svc.cluster.local"
    return {"metadata": {"resourceVersion": "7"}, "spec": {"http": [
        {"name": "ab-test", "route": [{"destination": {"host": host, "subset": "v2"}}]},
        {"name": "canary", "route": [
            {"destination": {"host": host, "subset": "v1"}, "weight": w1},
            {"destination": {"host": host, "subset": "v2"}, "weight": w2}]},
    ]}}


class _Api:
    """Stands in for CustomObjectsApi (no cluster here): GET answers `vs`, PATCH applies it."""

    def __init__(self, vs: dict[str, Any]) -> None:
        self.vs = vs

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        return self.vs

    def patch_namespaced_custom_object(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self.vs = {**self.vs, "spec": {**self.vs["spec"], "http": args[5]["spec"]["http"]}}
        return self.vs


def test_kubernetes_actuator_reads_relative_weights() -> None:
    assert shares(_vs(300, 100)["spec"]["http"][1]) == {"v1": 75, "v2": 25}
    act = KubernetesActuator(api=_Api(_vs(1, 1)))
    assert act.get_weights() == {"v1": 50, "v2": 50}
    assert act.set_weights({"v1": 80, "v2": 20}) == {"v1": 80, "v2": 20}


def test_rollout_state_keeps_fractional_percentages() -> None:
    state = RolloutState(strategy={}, target={}, weights={"v1": 33.33, "v2": 66.67})
    again = RolloutState.model_validate_json(state.model_dump_json())
    assert again.weights == {"v1": 33.33, "v2": 66.67}
    assert RolloutState(strategy={}, target={}, weights={"v1": 90}).model_dump()["weights"] == \
        {"v1": 90}
