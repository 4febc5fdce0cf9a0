"""The Kubernetes actuator through the official client against a loopback HTTP server that
speaks the API's GET/PATCH of networking.istio.io/v1 virtualservices (merge-patch, RFC 7386,
with resourceVersion conflicts), asserting the exact patches sent."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from vllm_canary.procs import free_port
from vllm_canary.rollout.actuators import ActuatorError, KubernetesActuator

ROUTES = Path(__file__).resolve().parents[2] / "src/vllm_canary/data/routes.yaml"
PATH = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/{name}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeApiServer:
    """One VirtualService; records every PATCH as (content-type, body)."""

    def __init__(self) -> None:
        vs = next(d for d in yaml.safe_load_all(ROUTES.read_text())
                  if d["kind"] == "VirtualService")
        vs["metadata"]["resourceVersion"] = "100"
        self.vs = vs
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.interfere = 0  # bump resourceVersion after this many GETs (another writer)
        self.port = free_port()

    def _bump(self) -> None:
        meta = self.vs["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def get(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.vs["metadata"]["name"]:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"},
                                     status=404)
        body = copy.deepcopy(self.vs)
        if self.interfere:
            self.interfere -= 1
            self.vs["spec"]["http"][0]["timeout"] = "30s"  # someone else's edit
            self._bump()
        return web.json_response(body)

    async def patch(self, request: web.Request) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        body = await request.json()
        self.patches.append((ctype, body))
        if ctype != "application/merge-patch+json":
            return web.json_response({"kind": "Status", "code": 415}, status=415)
        want = body.get("metadata", {}).get("resourceVersion")
        if want and want != self.vs["metadata"]["resourceVersion"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"},
                                     status=409)
        self.vs = merge_patch(self.vs, body)
        self._bump()
        return web.json_response(self.vs)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self.get)
        app.router.add_patch(PATH, self.patch)
        return app


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", server.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def actuator(server: FakeApiServer, name: str = "vllm") -> KubernetesActuator:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.port}"
    return KubernetesActuator("default", name, api=client.CustomObjectsApi(client.ApiClient(cfg)))


def expected_http(v1: int, v2: int, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    http = copy.deepcopy(base)
    http[1]["route"][0]["weight"] = v1
    http[1]["route"][1]["weight"] = v2
    return http


def test_steps_send_exactly_these_merge_patches(api_server: FakeApiServer) -> None:
    act = actuator(api_server)
    original = copy.deepcopy(api_server.vs["spec"]["http"])
    assert act.get_weights() == {"v1": 90, "v2": 10}
    for v1, v2 in ((90, 10), (50, 50), (0, 100), (100, 0)):
        assert act.set_weights({"v1": v1, "v2": v2}) == {"v1": v1, "v2": v2}
    assert api_server.patches == [
        ("application/merge-patch+json",
         {"metadata": {"resourceVersion": str(100 + i)},
          "spec": {"http": expected_http(v1, v2, original)}})
        for i, (v1, v2) in enumerate(((90, 10), (50, 50), (0, 100), (100, 0)))
    ]
    assert api_server.vs["spec"]["http"][0] == original[0]  # the x-ab-test route untouched
    assert api_server.vs["spec"]["hosts"] == ["vllm-service.default.svc.cluster.local"]


def test_a_conflicting_writer_is_not_overwritten(api_server: FakeApiServer) -> None:
    act = actuator(api_server)
    api_server.interfere = 1
    assert act.set_weights({"v1": 50, "v2": 50}) == {"v1": 50, "v2": 50}
    assert len(api_server.patches) == 2  # the first was refused with 409, then re-read
    assert api_server.vs["spec"]["http"][0]["timeout"] == "30s"  # their edit survived
    assert api_server.vs["spec"]["http"][1]["route"][1]["weight"] == 50


def test_missing_virtualservice_and_unknown_subset_are_errors(api_server: FakeApiServer) -> None:
    with pytest.raises(ActuatorError, match="404"):
        actuator(api_server, "nope").get_weights()
    with pytest.raises(ActuatorError, match="v3"):
        actuator(api_server).set_weights({"v1": 50, "v3": 50})
    assert api_server.patches == []
