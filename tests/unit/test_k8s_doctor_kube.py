"""`doctor --kube` reads live objects from a local HTTP server that answers the list calls."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

PLURALS = {"Service": "services", "Deployment": "deployments",
           "HorizontalPodAutoscaler": "horizontalpodautoscalers",
           "VirtualService": "virtualservices", "DestinationRule": "destinationrules",
           "ServiceMonitor": "servicemonitors"}


class FakeApi:
    """Answers `GET /api[s]/<group>/<version>/namespaces/<ns>/<plural>` from a dict of lists."""

    def __init__(self, objects: list[dict[str, Any]], namespace: str = "default"):
        self.lists: dict[str, list[dict[str, Any]]] = {}
        self.requested: list[str] = []
        for obj in objects:
            api = obj["apiVersion"]
            prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
            plural = PLURALS.get(obj["kind"])
            if plural:
                path = f"{prefix}/namespaces/{namespace}/{plural}"
                self.lists.setdefault(path, []).append(obj)
        for path in ("/api/v1/namespaces/default/services",
                     "/apis/apps/v1/namespaces/default/deployments",
                     "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers"):
            self.lists.setdefault(path, [])

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                api.requested.append(path)
                items = api.lists.get(path)
                body = (json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {},
                                    "items": items}) if items is not None else
                        json.dumps({"kind": "Status", "status": "Failure", "code": 404,
                                    "reason": "NotFound"}))
                self.send_response(200 if items is not None else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(objects: list[dict[str, Any]]) -> tuple[FakeApi, Path]:
        api = FakeApi(objects)
        server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        config = tmp_path / f"kubeconfig-{len(servers)}"
        config.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {
                "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": "t"}}]}))
        return api, config

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_canary.cli", "doctor", "--kube",
                           "--kubeconfig", str(config), "--namespace", "default"],
                          capture_output=True, text=True, timeout=120)


def test_live_release_from_the_chart_passes(render, fake_cluster):
    objects = [m.obj for m in render().manifests]
    api, config = fake_cluster(objects)
    proc = _doctor(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pass every troubleshooting check" in proc.stdout
    assert "/apis/networking.istio.io/v1/namespaces/default/virtualservices" in api.requested
    assert "/apis/argoproj.io/v1alpha1/namespaces/default/rollouts" in api.requested  # 404: skipped


def test_live_fault_is_found(render, fake_cluster):
    objects = [json.loads(json.dumps(m.obj)) for m in render().manifests]
    dr = next(o for o in objects if o["kind"] == "DestinationRule")
    dr["spec"]["subsets"][1]["labels"] = {"version": "canary"}
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    vs["spec"]["hosts"] = ["vllm-service"]
    _, config = fake_cluster(objects)
    proc = _doctor(config)
    assert proc.returncode == 1
    assert "FAIL [subset-labels] DestinationRule/vllm" in proc.stdout
    assert "FAIL [fqdn-hosts] VirtualService/vllm" in proc.stdout


def test_unreachable_cluster_is_a_one_line_error(tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    proc = subprocess.run([sys.executable, "-m", "vllm_canary.cli", "doctor", "--kube",
                           "--kubeconfig", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "cannot reach the Kubernetes API" in proc.stderr
    assert "Traceback" not in proc.stderr
