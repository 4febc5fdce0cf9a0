"""The admin API as the rollout controller and `vllm-canary routes` use it, and file reloads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fixtures.gateway import TOKEN, FakeUpstream, StartGateway
from vllm_canary.gateway.adminclient import AdminClient
from vllm_canary.gateway.server import Gateway
from vllm_canary.gateway.store import default_routes_path

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def call(gw: Gateway, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.request(
        method, gw.url("admin") + path, headers=AUTH if headers is None else headers,
        data=None if body is None else (body if isinstance(body, str) else json.dumps(body)),
    ) as resp:
        return resp.status, await resp.json()


async def test_get_routes(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    status, view = await call(gw, "GET", "/routes")
    assert status == 200
    assert view["weights"] == {"v1": 90, "v2": 10} and view["generation"] == 1
    assert view["virtualservices"][0]["kind"] == "VirtualService"
    assert view["destinationrules"][0]["spec"]["subsets"][1]["name"] == "v2"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_token_required(start_gateway: StartGateway, headers: dict[str, str]) -> None:
    gw = await start_gateway()
    status, body = await call(gw, "GET", "/routes", headers=headers)
    assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_set_weights_changes_traffic_atomically(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    status, body = await call(gw, "PUT", "/weights", {"weights": {"v1": 0, "v2": 100}})
    assert (status, body) == (200, {"weights": {"v1": 0, "v2": 100},
                                    "configured": {"v1": 0, "v2": 100}, "generation": 2})
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.post(gw.url() + "/v1/completions", data="{}") as resp:
                assert resp.headers["x-model-version"] == "v2"
    _, view = await call(gw, "GET", "/routes")
    canary = view["virtualservices"][0]["spec"]["http"][1]
    assert [d["weight"] for d in canary["route"]] == [0, 100]
    metric = gw.telemetry.route_weight.labels("vllm", "canary", "v2")._value.get()
    assert metric == 100


@pytest.mark.parametrize(("weights", "shares"), [
    ({"v1": 1, "v2": 1}, {"v1": 50, "v2": 50}),
    ({"v1": 300, "v2": 100}, {"v1": 75, "v2": 25}),
    ({"v1": 60, "v2": 30}, {"v1": 66.67, "v2": 33.33}),
])
async def test_weights_are_relative(start_gateway: StartGateway, upstreams: dict[str, FakeUpstream],
                                    weights: dict[str, int], shares: dict[str, float]) -> None:
    """Istio >= 1.15 (istio/istio#36069): weights need not sum to 100; the answer and
    GET /routes give each subset's percent of traffic, and the traffic follows it."""
    gw = await start_gateway()
    status, body = await call(gw, "PUT", "/weights", {"weights": weights})
    assert status == 200 and body["weights"] == shares and body["configured"] == weights
    _, view = await call(gw, "GET", "/routes")
    assert view["weights"] == shares
    assert [d["weight"] for d in view["virtualservices"][0]["spec"]["http"][1]["route"]] == \
        [weights["v1"], weights["v2"]]
    seen = {"v1": 0, "v2": 0}
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.post(gw.url() + "/v1/completions", data="{}") as resp:
                seen[resp.headers["x-model-version"]] += 1
    # 200 draws: 4 standard deviations of a binomial at p <= 0.75 is under 25.
    assert abs(seen["v2"] - 2 * shares["v2"]) < 25


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"weights": {"v1": 0, "v2": 0}}, "weights", "total destination weight = 0"),
    ({"weights": {"v1": 90, "v3": 10}}, "weights.v3", "unknown subset"),
    ({"weights": {"v1": 90.5, "v2": 9.5}}, "weights.v1", "whole number"),
    ({"weights": {"v1": 110, "v2": -10}}, "weights.v2", "whole number >= 0"),
    ({"weight": {"v1": 100}}, "weights", "needs \"weights\""),
    ("not json", None, "not JSON"),
])
async def test_bad_weights_are_400_and_change_nothing(
        start_gateway: StartGateway, body: Any, param: str | None, words: str) -> None:
    gw = await start_gateway()
    status, answer = await call(gw, "PUT", "/weights", body)
    assert status == 400
    assert answer["error"]["param"] == param and words in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert gw.store.current_weights() == {"v1": 90, "v2": 10}
    assert gw.store.snapshot.generation == 1


async def test_weights_on_a_named_route(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    status, _ = await call(gw, "PUT", "/weights?route=nope", {"weights": {"v1": 100}})
    assert status == 400
    status, body = await call(gw, "PUT", "/weights?route=canary", {"weights": {"v1": 50,
                                                                               "v2": 50}})
    assert status == 200 and body["weights"] == {"v1": 50, "v2": 50}


async def test_unknown_path_is_json_404(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    status, body = await call(gw, "GET", "/nope")
    assert status == 404 and "message" in body["error"]


async def test_reload_and_watch(start_gateway: StartGateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    docs = list(yaml.safe_load_all(default_routes_path().read_text()))
    gw = await start_gateway(yaml.safe_dump_all(docs))
    path = gw.store.path
    docs[0]["spec"]["http"][1]["route"][0]["weight"] = 80
    docs[0]["spec"]["http"][1]["route"][1]["weight"] = 20
    path.write_text(yaml.safe_dump_all(docs))
    for _ in range(100):  # the watcher polls every 0.1 s in tests
        if gw.store.current_weights() == {"v1": 80, "v2": 20}:
            break
        await asyncio.sleep(0.05)
    assert gw.store.current_weights() == {"v1": 80, "v2": 20}
    generation = gw.store.snapshot.generation
    path.write_text("kind: [broken")
    status, body = await call(gw, "POST", "/reload")
    assert status == 422 and "previous table stays" in body["error"]["message"]
    assert gw.store.current_weights() == {"v1": 80, "v2": 20}
    _, view = await call(gw, "GET", "/routes")
    assert "not valid YAML" in view["last_error"] and view["generation"] == generation


async def test_admin_client(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    client = AdminClient(gw.url("admin"), TOKEN)
    answer = await asyncio.to_thread(client.set_weights, {"v1": 75, "v2": 25})
    assert answer["weights"] == {"v1": 75, "v2": 25}
    view = await asyncio.to_thread(client.routes)
    assert view["weights"] == {"v1": 75, "v2": 25}


async def test_a_routes_file_that_is_not_text_is_refused_and_watching_goes_on(
        start_gateway: StartGateway) -> None:
    docs = list(yaml.safe_load_all(default_routes_path().read_text()))
    gw = await start_gateway(yaml.safe_dump_all(docs))
    path = gw.store.path
    path.write_bytes(b"\xff\xfe routes saved as UTF-16 \x00")
    status, body = await call(gw, "POST", "/reload")
    assert status == 422 and "not UTF-8" in body["error"]["message"]
    docs[0]["spec"]["http"][1]["route"][0]["weight"] = 70
    docs[0]["spec"]["http"][1]["route"][1]["weight"] = 30
    path.write_text(yaml.safe_dump_all(docs))
    for _ in range(100):  # the watcher polls every 0.1 s in tests
        if gw.store.current_weights() == {"v1": 70, "v2": 30}:
            break
        await asyncio.sleep(0.05)
    assert gw.store.current_weights() == {"v1": 70, "v2": 30}
