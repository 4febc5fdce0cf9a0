"""Read a release's live objects through the `kubernetes` client, for `doctor --kube`."""

from __future__ import annotations

from typing import Any

from vllm_canary.errors import UserError
from vllm_canary.k8s.render import Manifest

# (group, version, plural, kind) of the custom kinds the checks read; absent CRDs are skipped.
CUSTOM_KINDS = (
    ("networking.istio.io", "v1", "virtualservices", "VirtualService"),
    ("networking.istio.io", "v1", "destinationrules", "DestinationRule"),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
    ("argoproj.io", "v1alpha1", "rollouts", "Rollout"),
)


def _client(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client, config

    try:
        if kubeconfig or context:
            config.load_kube_config(config_file=kubeconfig, context=context)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise UserError(f"no usable kubeconfig ({exc}); pass --kubeconfig or set KUBECONFIG") \
            from None
    return client.ApiClient()


def _items(api: Any, response: Any, kind: str, api_version: str) -> list[Manifest]:
    found = []
    for item in response.items:
        obj = api.sanitize_for_serialization(item)
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        found.append(Manifest("live", obj))
    return found


def live_objects(
    namespace: str, *, kubeconfig: str | None = None, context: str | None = None
) -> list[Manifest]:
    """Services, workloads, HPAs and the custom kinds the checks need, from one namespace."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = _client(kubeconfig, context)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    hpa, custom = client.AutoscalingV2Api(api), client.CustomObjectsApi(api)
    found: list[Manifest] = []
    try:
        found += _items(api, core.list_namespaced_service(namespace), "Service", "v1")
        found += _items(api, apps.list_namespaced_deployment(namespace), "Deployment", "apps/v1")
        found += _items(api, hpa.list_namespaced_horizontal_pod_autoscaler(namespace),
                        "HorizontalPodAutoscaler", "autoscaling/v2")
        for group, version, plural, kind in CUSTOM_KINDS:
            try:
                listing = custom.list_namespaced_custom_object(group, version, namespace, plural)
            except ApiException as exc:
                if exc.status == 404:  # the CRD is not installed: nothing of that kind
                    continue
                raise
            for obj in listing.get("items", []):
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", f"{group}/{version}")
                found.append(Manifest("live", obj))
    except ApiException as exc:
        raise UserError(f"the Kubernetes API refused a list call: {exc.status} {exc.reason}") \
            from None
    except HTTPError as exc:
        raise UserError(f"cannot reach the Kubernetes API: {exc}") from None
    return found
