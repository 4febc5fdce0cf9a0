"""`vllm-canary serve` as a real process: the official openai client, the seed's commands,
metrics on the separate port (promtool-clean), and a graceful drain on SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import urllib.request

import openai
import pytest

from tests.conftest import require
from tests.fixtures.server import StartServer
from vllm_canary.dataloop.logs import ReadStats, read_records


def test_openai_client_completions_and_chat(serve_process: StartServer) -> None:
    server = serve_process("v1")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    [model] = [m.id for m in client.models.list()]
    done = client.completions.create(model=model, prompt="hello", max_tokens=5)
    assert done.choices[0].text and done.usage and done.usage.completion_tokens == 5
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=1)
    assert chat.choices[0].message.content and chat.choices[0].message.role == "assistant"
    parts = [c.choices[0].text for c in client.completions.create(
        model=model, prompt="hello", max_tokens=6, stream=True) if c.choices]
    assert len(parts) == 6
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=1,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content  # same seed, same answer
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", max_tokens=-1)


def test_seed_curl_and_metrics_port(serve_process: StartServer) -> None:
    server = serve_process("v2")
    require(shutil.which("curl") is not None, "curl", "apt-get install curl")
    out = subprocess.run(["curl", "-s", "-D", "-", f"{server.url}/v1/completions", "-d",
                          '{"prompt":"hello","max_tokens":5}'], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    headers, _, body = out.partition("\n\n")  # text mode turned \r\n into \n
    assert "x-model-version: v2" in headers.lower()
    assert json.loads(body)["text"]
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        exposition = resp.read().decode()
    for name in ("vllm_request_latency_seconds", "vllm_token_latency_seconds",
                 "vllm_gpu_utilization", "vllm_requests_total"):
        assert f'{name}' in exposition
    assert 'vllm_requests_total{model="sim-llm",status="200",version="v2"} 1.0' in exposition
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool", "apt-get install prometheus")
    assert promtool is not None
    lint = subprocess.run([promtool, "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout


def test_sigterm_drains_in_flight_requests(serve_process: StartServer) -> None:
    server = serve_process("v1", "--latency-factor", "1", "--tpot-ms", "20")
    result: dict[str, object] = {}

    def slow_request() -> None:
        req = urllib.request.Request(f"{server.url}/v1/completions",
                                     data=b'{"prompt":"hi","max_tokens":60}')
        with urllib.request.urlopen(req, timeout=30) as resp:
            result["body"] = json.load(resp)

    thread = threading.Thread(target=slow_request)
    thread.start()
    for _ in range(100):  # wait until the request is in flight (bounded)
        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
            if 'vllm_requests_in_flight{model="sim-llm",version="v1"} 1.0' in resp.read().decode():
                break
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert server.proc.wait(30) == 0
    assert result["body"]["usage"]["completion_tokens"] == 60  # type: ignore[index]
    [path] = list(server.log_dir.glob("*.jsonl"))
    assert [r["status"] for r in read_records([path], ReadStats())] == [200]
