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


def _items(response: Any, kind: str, api_version: str) -> list[Manifest]:
    """Objects of a raw list response; the JSON is read as is, so a field the client's
    models would reject (or not know) still reaches the checks."""
    import json

    try:
        listing = json.loads(response.data)
    except ValueError as exc:
        raise UserError(f"the Kubernetes API sent a {kind} list that is not JSON: {exc}") \
            from None
    found = []
    for obj in listing.get("items") or []:
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
        raw = {"_preload_content": False}
        found += _items(core.list_namespaced_service(namespace, **raw), "Service", "v1")
        found += _items(apps.list_namespaced_deployment(namespace, **raw), "Deployment",
                        "apps/v1")
        found += _items(hpa.list_namespaced_horizontal_pod_autoscaler(namespace, **raw),
                        "HorizontalPodAutoscaler", "autoscaling/v2")
        for group, version, plural, kind in CUSTOM_KINDS:
            try:
                response = custom.list_namespaced_custom_object(
                    group, version, namespace, plural, **raw)
            except ApiException as exc:
                if exc.status == 404:  # the CRD is not installed: nothing of that kind
                    continue
                raise
            found += _items(response, kind, f"{group}/{version}")
    except ApiException as exc:
        raise UserError(f"the Kubernetes API refused a list call: {exc.status} {exc.reason}") \
            from None
    except HTTPError as exc:
        raise UserError(f"cannot reach the Kubernetes API: {exc}") from None
    return found
