"""Actuator for a cluster: merge-patch of the Istio VirtualService's weighted route through
the official `kubernetes` client. A merge-patch replaces lists whole, so the whole `http`
list read by GET is sent back with only the weights changed, guarded by resourceVersion
(a conflict means someone else wrote in between: read again and retry)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from vllm_canary.gateway.routing import percentages
from vllm_canary.rollout.actuators.base import ActuatorError

GROUP, VERSION, PLURAL = "networking.istio.io", "v1", "virtualservices"
CONFLICT_RETRIES = 5


def weighted_route(http: list[dict[str, Any]]) -> dict[str, Any]:
    """The first http route whose `route` splits by weight over subsets (the chart's http[1];
    http[0], the `x-ab-test` header route, has a single destination and is left alone)."""
    for route in http:
        dests = route.get("route") or []
        if len(dests) > 1 and all("subset" in d.get("destination", {}) for d in dests):
            return route
    raise ActuatorError("VirtualService has no weighted route over subsets to patch")


def shares(route: dict[str, Any]) -> dict[str, int | float]:
    """Percent of traffic per subset of a weighted route; weights are relative (Istio >= 1.15,
    istio/istio#36069), so {v1: 1, v2: 1} reads as {v1: 50, v2: 50}."""
    return percentages({d["destination"]["subset"]: int(d.get("weight", 0))
                        for d in route["route"]})


def with_weights(http: list[dict[str, Any]], weights: dict[str, int]) -> list[dict[str, Any]]:
    new = copy.deepcopy(http)
    route = weighted_route(new)
    subsets = {d["destination"]["subset"] for d in route["route"]}
    if set(weights) - subsets:
        raise ActuatorError(f"VirtualService routes to {sorted(subsets)}, not {sorted(weights)}")
    for d in route["route"]:
        d["weight"] = int(weights.get(d["destination"]["subset"], 0))
    return new


def with_mirror(http: list[dict[str, Any]], subset: str, percent: float) -> list[dict[str, Any]]:
    """The weighted route with `mirror` + `mirrorPercentage` as the chart renders them (0%:
    both removed, so Istio mirrors nothing)."""
    new = copy.deepcopy(http)
    route = weighted_route(new)
    route.pop("mirrors", None)
    if percent <= 0:
        route.pop("mirror", None)
        route.pop("mirrorPercentage", None)
        return new
    route["mirror"] = {"host": route["route"][0]["destination"]["host"], "subset": subset}
    route["mirrorPercentage"] = {"value": float(percent)}
    return new


def mirror_percent(route: dict[str, Any]) -> float:
    """Istio's reading: no `mirror`, 0%; a `mirror` without `mirrorPercentage`, 100%."""
    if "mirror" not in route:
        return 0.0
    return float((route.get("mirrorPercentage") or {}).get("value", 100.0))


class KubernetesActuator:
    def __init__(self, namespace: str = "default", name: str = "vllm",
                 api: Any | None = None, context: str | None = None) -> None:
        self.namespace, self.name = namespace, name
        if api is None:
            from kubernetes import client, config

            try:
                config.load_kube_config(context=context)
            except Exception:
                try:
                    config.load_incluster_config()
                except Exception as exc:
                    raise ActuatorError(f"no Kubernetes credentials: {exc}") from None
            api = client.CustomObjectsApi()
        self.api = api

    def _get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name))
        except ApiException as exc:
            raise ActuatorError(f"GET virtualservice {self.namespace}/{self.name}: "
                                f"{exc.status} {exc.reason}") from None
        except OSError as exc:
            raise ActuatorError(f"Kubernetes API unreachable: {exc}") from None

    def get_weights(self) -> dict[str, int | float]:
        return shares(weighted_route(self._get()["spec"].get("http", [])))

    def set_weights(self, weights: dict[str, int]) -> dict[str, int | float]:
        answer = self._patch_http(lambda http: with_weights(http, weights))
        return shares(weighted_route(answer["spec"]["http"]))

    def set_mirror(self, percent: float, subset: str) -> float:
        """Patch the weighted route's `mirror` + `mirrorPercentage`; the confirmed percent."""
        answer = self._patch_http(lambda http: with_mirror(http, subset, percent))
        return mirror_percent(weighted_route(answer["spec"]["http"]))

    def _patch_http(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
                    ) -> dict[str, Any]:
        """GET, change the `http` list, merge-patch it back guarded by resourceVersion."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(CONFLICT_RETRIES):
            vs = self._get()
            body = {"metadata": {"resourceVersion": vs["metadata"]["resourceVersion"]},
                    "spec": {"http": change(vs["spec"].get("http", []))}}
            try:
                answer = self.api.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, body,
                    _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise ActuatorError(f"PATCH virtualservice {self.namespace}/{self.name}: "
                                    f"{exc.status} {exc.reason}") from None
            except OSError as exc:
                raise ActuatorError(f"Kubernetes API unreachable: {exc}") from None
            return dict(answer)
        raise ActuatorError(f"virtualservice {self.namespace}/{self.name} kept changing "
                            f"({CONFLICT_RETRIES} conflicts)")

    def describe(self) -> str:
        return f"VirtualService {self.namespace}/{self.name} (Kubernetes merge-patch)"
