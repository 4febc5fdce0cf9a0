"""The vLLM engine's supervision (start, readiness, child death, stop) with a stand-in child:
a tiny OpenAI server started exactly as vLLM would be (`<python> -m vllm... --port N`).
The real vLLM is exercised in tests/integration/test_engine_vllm.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from vllm_canary.errors import UserError
from vllm_canary.procs import free_port, http_ok
from vllm_canary.server.engines.vllm import VllmEngine
from vllm_canary.server.relay import RelayFront, listen
from vllm_canary.server.settings import ServeSettings

FAKE_SERVER = r'''
import json, os, sys
from aiohttp import web

args = sys.argv[1:]
def flag(name):
    return args[len(args) - 1 - args[::-1].index(name) + 1]

async def health(request):
    return web.Response(text="ok")

async def models(request):
    return web.json_response({"data": [{"id": flag("--served-model-name")}]})

async def env(request):
    return web.json_response({"env": dict(os.environ), "argv": args})

async def completions(request):
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for text, finish in (("fake", None), (" answer", "stop")):
        chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp

app = web.Application()
app.router.add_get("/health", health)
app.router.add_get("/v1/models", models)
app.router.add_get("/env", env)
app.router.add_post("/v1/completions", completions)
web.run_app(app, host=flag("--host"), port=int(flag("--port")), print=None)
'''


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """An executable that, called as `python -m vllm.entrypoints...`, runs the stand-in."""
    server = tmp_path / "fake_vllm.py"
    server.write_text(FAKE_SERVER)
    launcher = tmp_path / "python"
    launcher.write_text(f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{server}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-test"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


async def test_ready_once_the_child_answers_and_requests_are_relayed(
    fake_python: str, model_dir: Path
) -> None:
    engine = VllmEngine(model_dir=model_dir, python=fake_python, extra_args=["--dtype", "float32"])
    front = RelayFront(ServeSettings(engine="vllm", model=str(model_dir)), engine)
    await front.start()  # starts the engine
    server = await listen(front.handle, "127.0.0.1", 0, 4096)
    try:
        assert not engine.ready()  # the child is still starting: the front answers itself
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(_post, f"http://127.0.0.1:{server.port}/v1/completions")
        assert info.value.code == 503
        await engine.wait_ready(60)
        assert engine.model_names() == ["tiny-test"]
        assert http_ok(f"{engine.base_url}/health")
        direct = await asyncio.to_thread(_post, f"{engine.base_url}/v1/completions")
        relayed = await asyncio.to_thread(_post, f"http://127.0.0.1:{server.port}/v1/completions")
        assert relayed == direct and b'" answer"' in relayed
        seen = await asyncio.to_thread(_get_json, f"{engine.base_url}/env")
        assert seen["env"]["HF_HUB_OFFLINE"] == "1"
        assert seen["env"]["VLLM_NO_USAGE_STATS"] == "1"
        assert seen["argv"][-2:] == ["--dtype", "float32"]
        assert seen["argv"][:2] == ["--model", str(model_dir)]
    finally:
        await server.close()
        await front.close()  # stops the engine
    assert engine.proc is not None and engine.proc.poll() is not None
    assert not engine.failed.is_set() and not engine.ready()


async def test_child_death_makes_it_unready_and_is_reported(
    fake_python: str, model_dir: Path
) -> None:
    codes: list[int] = []
    engine = VllmEngine(model_dir=model_dir, python=fake_python, on_exit=codes.append)
    await engine.start()
    try:
        await engine.wait_ready(60)
        assert engine.proc is not None
        os.kill(engine.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(engine.wait_exit(), 30) == -signal.SIGKILL
        assert engine.failed.is_set()
        assert codes == [-signal.SIGKILL]
        assert not engine.ready()
    finally:
        await engine.close()


async def test_child_address_can_be_chosen_after_the_double_dash(
    fake_python: str, model_dir: Path
) -> None:
    port = free_port()
    engine = VllmEngine(model_dir=model_dir, python=fake_python, extra_args=["--port", str(port)])
    assert engine.port == port
    assert engine.argv().count("--port") == 1
    await engine.start()
    try:
        await engine.wait_ready(60)
        assert engine.base_url == f"http://127.0.0.1:{port}"
    finally:
        await engine.close()


async def test_a_folder_without_a_model_is_a_user_error(tmp_path: Path) -> None:
    engine = VllmEngine(model_dir=tmp_path / "nowhere", python=sys.executable)
    with pytest.raises(UserError, match="not a model folder"):
        await engine.start()


def test_a_hub_name_is_passed_to_vllm_as_is() -> None:
    engine = VllmEngine(model_dir="Qwen/Qwen2.5-0.5B-Instruct", python=sys.executable)
    assert engine.model_name == "Qwen2.5-0.5B-Instruct"
    assert engine.argv()[3:5] == ["--model", "Qwen/Qwen2.5-0.5B-Instruct"]


def _post(url: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())
