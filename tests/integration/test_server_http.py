"""The model server over HTTP, in-process: bad input, headers, metrics, the seed's curl."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from vllm_canary.dataloop.logs import ReadStats, read_records
from vllm_canary.server.app import ModelServer
from vllm_canary.server.engines import build_engine
from vllm_canary.server.requestlog import RequestLog
from vllm_canary.server.settings import ServeSettings


async def make_client(tmp_path: Path | None = None, **kw: object) -> tuple[TestClient,
                                                                             ModelServer]:
    options = {"latency_factor": 0.02, "max_body_bytes": 4096, "max_model_len": 256, **kw}
    settings = ServeSettings(**options)  # type: ignore[arg-type]
    log = RequestLog(tmp_path, settings.version, host="t") if tmp_path else None
    server = ModelServer(settings, build_engine(settings), request_log=log)
    await server.start()
    client = TestClient(TestServer(server.app(), handler_cancellation=True))
    await client.start_server()
    return client, server


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_seed_curl_without_content_type_reads_json_and_has_text() -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/completions", data=b'{"prompt":"hello","max_tokens":5}',
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    body = await resp.json()
    assert resp.status == 200
    assert resp.headers["x-model-version"] == "v1"
    assert body["text"] == body["choices"][0]["text"] and body["text"]
    assert body["usage"]["completion_tokens"] == 5
    await client.close()


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/v1/completions", b"{not json", 400, None),
        ("/v1/completions", b'{"prompt": 1}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": -5}', 400, "max_tokens"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 10000000}', 400, "max_tokens"),
        ("/v1/completions", b'{"prompt": "x", "model": "gpt-9"}', 404, "model"),
        ("/v1/completions", b'{"prompt": "' + b"word " * 300 + b'"}', 400, "max_tokens"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
        ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ],
)
async def test_bad_input_gets_openai_error_body(path: str, payload: bytes, status: int,
                                                param: str | None) -> None:
    client, _ = await make_client()
    resp = await client.post(path, data=payload)
    body = await resp.json()
    assert resp.status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param:
        assert (body["error"]["param"] or "").startswith(param)
    assert resp.headers["x-model-version"] == "v1"
    await client.close()


async def test_body_over_limit_is_413_and_unknown_path_is_404_json() -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/completions", data=b'{"prompt":"' + b"a" * 10000 + b'"}')
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"
    resp = await client.get("/v1/nothing")
    assert resp.status == 404 and "error" in await resp.json()
    assert resp.headers["x-model-version"] == "v1"
    resp = await client.get("/v1/completions")
    assert resp.status == 405
    await client.close()


async def test_metrics_move_with_requests_and_status_labels() -> None:
    client, _ = await make_client(version="v2", error_rate=0.5, seed=7)
    for _ in range(20):
        await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    await client.post("/v1/completions", json={"prompt": 1})
    text = await (await client.get("/metrics")).text()
    counts = samples(text, "vllm_requests_total")
    by_status = {dict(k)["status"]: v for k, v in counts.items()}
    assert by_status["200"] + by_status["500"] == 20 and by_status["500"] >= 3
    assert by_status["400"] == 1
    assert all(dict(k)["version"] == "v2" and dict(k)["model"] == "sim-llm" for k in counts)
    assert samples(text, "vllm_request_latency_seconds_count")[
        (("model", "sim-llm"), ("version", "v2"))] == 21
    assert sum(samples(text, "vllm_token_latency_seconds_count").values()) == by_status["200"] * 2
    assert sum(samples(text, "vllm_generation_tokens_total").values()) == by_status["200"] * 3
    assert sum(samples(text, "vllm_gpu_utilization_count").values()) == 20
    await client.close()


async def test_stream_has_role_chunks_usage_and_done() -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": 2,
        "stream": True, "stream_options": {"include_usage": True}})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [ln for ln in (await resp.text()).split("\n\n") if ln]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{"prompt_tokens"' in events[-2] and '"completion_tokens":8' in events[-2]
    assert sum('"role":"assistant"' in e for e in events) == 2
    await client.close()


async def test_disconnect_mid_stream_stops_generation_and_logs_499(tmp_path: Path) -> None:
    client, server = await make_client(tmp_path, latency_factor=1.0, tpot_ms=50)
    resp = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 200,
                                                       "stream": True})
    await resp.content.readline()
    resp.close()  # the client goes away after the first chunk
    engine = server.engine
    for _ in range(100):
        if engine.running == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert engine.running == 0  # type: ignore[attr-defined]
    await client.close()
    await server.close()
    [path] = tmp_path.glob("*.jsonl")
    [record] = list(read_records([path], ReadStats()))
    assert record["status"] == 499
    assert record["completion_tokens"] is None


async def test_request_log_fields_and_opt_out(tmp_path: Path) -> None:
    client, server = await make_client(tmp_path)
    await client.post("/v1/completions", json={"prompt": "mail me: x@y.io", "max_tokens": 2})
    await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "secret"}], "max_tokens": 2},
        headers={"x-no-log": "1"})
    await client.close()
    await server.close()
    [path] = tmp_path.glob("*.jsonl")
    first, second = read_records([path], ReadStats())
    assert first["prompt"] == "mail me: [EMAIL]" and first["status"] == 200
    assert first["completion"] and first["completion_tokens"] == 2
    assert first["params"]["max_tokens"] == 2 and first["ttft_s"] > 0
    assert second["opt_out"] is True
    assert "messages" not in second and "completion" not in second


async def test_nulls_prompt_lists_and_vllm_fields_over_http() -> None:
    client, _ = await make_client()
    # OpenAI's schema marks these nullable: null means the default (was a 400).
    resp = await client.post("/v1/completions", json={
        "prompt": ["hello", "the model"], "n": 2, "max_tokens": 3, "temperature": None,
        "top_p": None, "stream": None, "logprobs": None, "echo": None})
    body = await resp.json()
    assert resp.status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]  # prompt * n + choice
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15,
                             "prompt_tokens_details": None, "completion_tokens_details": None}
    first = body["choices"][0]
    assert first["stop_reason"] is None and first["logprobs"] is None
    assert body["text"] == first["text"]
    # The fields a real vLLM 0.32 writes (model_dump of CompletionResponse), nulls included.
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "text",
                         "service_tier", "system_fingerprint", "kv_transfer_params",
                         "ec_transfer_params", "metrics"}
    assert set(first) == {"index", "text", "logprobs", "finish_reason", "stop_reason",
                          "token_ids", "prompt_logprobs", "prompt_token_ids", "routed_experts"}
    assert body["system_fingerprint"] == "vllm-canary-sim-v1"
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 2,
        "stream": True})
    events = [e for e in (await resp.text()).split("\n\n") if e.startswith("data: {")]
    # vLLM opens a chat stream with one role chunk per choice, before any token.
    assert ['"role":"assistant","content":""' in e for e in events[:2]] == [True, True]
    last = [e for e in events if '"finish_reason":"length"' in e]
    assert len(last) == 2 and all('"stop_reason":null' in e for e in last)
    assert '"system_fingerprint":"vllm-canary-sim-v1"' in last[-1]  # on each last chunk
    await client.close()


@pytest.mark.parametrize(("payload", "says"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}]},
     "only text content parts, not 'image_url'"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"42": 5}},
     "does not implement the setting 'logit_bias'"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "z", "schema": {
            "type": "object", "properties": {"zip": {"type": "string", "pattern": "^\\\\d+$"}}}}}},
     "schema keyword 'pattern'"),
])
async def test_what_the_sim_cannot_do_is_a_400_saying_so(payload: dict, says: str) -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/chat/completions", json=payload)
    body = await resp.json()
    assert resp.status == 400 and says in body["error"]["message"]
    await client.close()


async def test_request_log_records_tool_call_arguments(tmp_path: Path) -> None:
    client, server = await make_client(tmp_path)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "look it up"}], "tools": tools,
        "tool_choice": "required", "stream": True})
    await resp.text()
    await client.close()
    await server.close()
    [path] = tmp_path.glob("*.jsonl")
    [record] = list(read_records([path], ReadStats()))
    [call] = record["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert "q" in json.loads(call["function"]["arguments"])
    assert record["finish_reason"] == "tool_calls" and record["status"] == 200
