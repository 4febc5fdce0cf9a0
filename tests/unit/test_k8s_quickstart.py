"""The quick start's two side files fit the chart: kube-prometheus-stack finds our monitors,
rules and dashboard; Istio's ingress gateway carries the label our Gateway selects."""

from __future__ import annotations

import yaml

from tests.fixtures.k8s import ROOT, find


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "k8s" / name).read_text())


def test_prometheus_values_pick_up_the_chart_objects(render):
    values = _load("prometheus-values.yaml")
    spec = values["prometheus"]["prometheusSpec"]
    for selector in ("serviceMonitor", "podMonitor", "rule"):
        assert spec[f"{selector}SelectorNilUsesHelmValues"] is False
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    labels = find(render().manifests, "ConfigMap", "vllm-sre-dashboard")["metadata"]["labels"]
    assert labels[sidecar["label"]] == sidecar["labelValue"]


def test_istio_install_file_matches_the_gateway_selector(render):
    operator = _load("istio-demo.yaml")
    assert operator["kind"] == "IstioOperator"
    assert operator["spec"]["profile"] == "demo"
    gateway = operator["spec"]["components"]["ingressGateways"][0]
    selector = find(render().manifests, "Gateway", "vllm-gateway")["spec"]["selector"]
    assert selector.items() <= gateway["label"].items()
