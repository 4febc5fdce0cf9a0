"""The LoRA front in-process on loopback, in front of a recording upstream that stands in for
vLLM (the real one is in test_lora.py): the bytes that reach vLLM, the version labels, the
admin API's guards, merged metrics and injected failures. Fast; no model needed."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from vllm_canary import procs
from vllm_canary.server.lora import Adapter
from vllm_canary.server.lorafront import LoraFront
from vllm_canary.server.relay import RelayFront, listen
from vllm_canary.server.settings import ServeSettings

TOKEN = "t0ken"


class FakeVllm:
    """The engine seen by the fronts: ready, at the recording upstream's URL."""

    name = "vllm"

    def __init__(self, url: str) -> None:
        self.base_url = url

    def ready(self) -> bool:
        return True

    def model_names(self) -> list[str]:
        return ["tiny-v1"]

    async def start(self) -> None:
        return None

    async def wait_ready(self, timeout: float | None = None) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def front(tmp_path, monkeypatch):
    """(base URL of a LoraFront with adapter v2 and an error rate on v3, received bodies)."""
    received: list[bytes] = []

    async def completions(request: web.Request) -> web.Response:
        raw = await request.read()
        received.append(raw)
        model = json.loads(raw).get("model")
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "model": model,
                                  "choices": [{"index": 0, "text": "ok", "finish_reason":
                                               "length"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                            "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    up_port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()

    monkeypatch.setenv("VLLM_CANARY_ADMIN_TOKEN", TOKEN)
    settings = ServeSettings(version="v1", engine="vllm", model="tiny-v1", enable_lora=True,
                             log_dir=tmp_path / "logs", lora_error_rate=["v3=1.0"])
    engine = FakeVllm(f"http://127.0.0.1:{up_port}")
    base = RelayFront(settings, engine)  # type: ignore[arg-type]
    lora = LoraFront(settings, base)
    await lora.start()
    await lora._loader  # type: ignore[misc]  # no --lora adapters: ready at once
    for version in ("v2", "v3"):  # as manager.load would leave them (it needs a real vLLM)
        adapter = Adapter(version, f"tiny-v1-{version}-abc", "/adapters/x", 8)
        lora.manager.table = lora.manager.table.with_(adapter)
        await lora._add(adapter)
    port = procs.free_port()
    server = await listen(lora.handle, "127.0.0.1", port, 1 << 20)
    try:
        yield f"http://127.0.0.1:{port}", received, lora
    finally:
        await server.close()
        await lora.close()
        await runner.cleanup()


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None,
                method: str = "POST") -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.request(
            method, url, data=data, headers=headers or {}) as r:
        body = await r.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body
        return r.status, dict(r.headers), parsed


async def test_only_the_model_value_changes_on_the_way_to_vllm(front):
    url, received, _ = front
    body = b'{ "prompt" : "hi",\n "max_tokens": 5.0E0, "model":"x", "n": 1 }'
    status, head, answer = await _post(url + "/v1/completions", body,
                                       {"x-canary-version": "v2"})
    assert status == 200 and head["x-model-version"] == "v2" and answer["text"] == "ok"
    assert received[-1] == body.replace(b'"x"', b'"tiny-v1-v2-abc"')
    seed = b'{"prompt":"hello","max_tokens":5}'  # the seed's curl body, form content type
    status, head, _ = await _post(url + "/v1/completions", seed,
                                  {"x-canary-version": "v2",
                                   "content-type": "application/x-www-form-urlencoded"})
    assert status == 200 and received[-1] == b'{"model":"tiny-v1-v2-abc","prompt":"hello",' \
        b'"max_tokens":5}'
    status, head, _ = await _post(url + "/v1/completions", seed)  # the base: untouched
    assert status == 200 and head["x-model-version"] == "v1" and received[-1] == seed


async def test_versions_not_served_and_vllms_runtime_routes(front):
    url, received, _ = front
    n = len(received)
    status, head, answer = await _post(url + "/v1/completions", b'{"prompt":"a"}',
                                       {"x-canary-version": "v9"})
    assert status == 404 and answer["error"]["param"] == "x-canary-version"
    assert head["x-model-version"] == "v1"
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        status, _, answer = await _post(url + path, b'{"lora_name":"a","lora_path":"/etc"}')
        assert status == 403 and "vllm-canary lora" in answer["error"]["message"]
    assert len(received) == n  # none of them reached vLLM


async def test_admin_api_guards(front, monkeypatch):
    url, _, lora = front
    admin = url + "/vllm-canary/lora"
    assert (await _post(admin, b"", method="GET"))[0] == 401
    assert (await _post(admin, b"", {"authorization": "Bearer wrong"}, "GET"))[0] == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    status, _, view = await _post(admin, b"", auth, "GET")
    assert status == 200 and [a["version"] for a in view["adapters"]] == ["v2", "v3"]
    assert view["base"] == "v1" and view["max_lora_rank"] == 16 and not view["loading"]
    for bad in (b"nope", b'{"version": 3}', b'{"version":"v4","path":"/a","error_rate":2}'):
        status, _, answer = await _post(admin, bad, auth)
        assert status == 400 and "expected" in answer["error"]["message"], bad
    status, _, answer = await _post(admin, b'{"version":"v4","path":"/nonexistent"}', auth)
    assert status == 400 and "not a LoRA adapter folder" in answer["error"]["message"]
    assert (await _post(admin + "/v9", b"", auth, "DELETE"))[0] == 404
    assert (await _post(admin, b"", auth, "PUT"))[0] == 405
    lora._token = ""  # started without $VLLM_CANARY_ADMIN_TOKEN: the API is off
    assert (await _post(admin, b"", auth, "GET"))[0] == 403


async def test_merged_metrics_and_injected_failures(front):
    url, received, _ = front
    n = len(received)
    for _ in range(3):
        status, head, answer = await _post(url + "/v1/completions", b'{"prompt":"a"}',
                                           {"x-canary-version": "v3"})
        assert status == 500 and head["x-model-version"] == "v3"
        assert "injected" in answer["error"]["message"]
    assert len(received) == n  # failed at the front
    await _post(url + "/v1/completions", b'{"prompt":"a"}', {"x-canary-version": "v2"})
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))  # one family per name, versions merged
    counts = {(s.labels["version"], s.labels["model"], s.labels["status"]): s.value
              for f in text_string_to_metric_families(text) if f.name == "vllm_requests"
              for s in f.samples if s.name == "vllm_requests_total" and s.value}
    assert counts[("v3", "tiny-v1-v3-abc", "500")] == 3
    assert counts[("v2", "tiny-v1-v2-abc", "200")] >= 1
