"""`vllm-canary serve --engine vllm` with the real vLLM (CPU build) and a tiny local model,
driven by the official `openai` client: answers, streaming, our metrics and vLLM's own.

One server is shared by the session (vLLM takes ~30-90 s to start here); the last test kills
vLLM underneath it and checks that `serve` notices and exits non-zero.
"""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

# vLLM may need minutes to start on a busy 2-core machine; the shared start counts here.
pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]


def client(vllm_server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_server.server.url}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def metric_samples(url: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_models_and_version_header(vllm_server: Any) -> None:
    raw = client(vllm_server).models.with_raw_response.list()
    assert raw.headers["x-model-version"] == "v2"
    assert [m.id for m in raw.parse().data] == ["tiny-v2"]


def test_completion_streamed_equals_not_streamed(vllm_server: Any) -> None:
    api = client(vllm_server)
    # Greedy and ignoring EOS (a vLLM field, passed through): exactly 12 tokens, reproducible.
    args: dict[str, Any] = dict(model="tiny-v2", prompt="The canary release", max_tokens=12,
                                temperature=0, extra_body={"ignore_eos": True})
    whole = api.completions.create(**args)
    assert whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length"
    chunks = list(api.completions.create(**args, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_chat_streamed_and_not(vllm_server: Any) -> None:
    api = client(vllm_server)
    messages = [{"role": "user", "content": "Is the new version good?"}]
    args: dict[str, Any] = dict(model="tiny-v2", messages=messages, max_tokens=8, temperature=0,
                                extra_body={"ignore_eos": True})
    answer = api.chat.completions.create(**args)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in api.chat.completions.create(**args, stream=True)
        if c.choices
    )
    assert streamed == answer.choices[0].message.content


def test_prompt_longer_than_the_context_is_a_400(vllm_server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(vllm_server).completions.create(
            model="tiny-v2", prompt="hello world " * 300, max_tokens=5
        )
    assert info.value.status_code == 400
    assert "maximum context length is 256" in str(info.value.message)


def test_logprobs_through_the_front_with_the_openai_client(vllm_server: Any) -> None:
    api = client(vllm_server)
    args: dict[str, Any] = dict(model="tiny-v2", max_tokens=4, temperature=0,
                                extra_body={"ignore_eos": True})
    chat = api.chat.completions.create(messages=[{"role": "user", "content": "hi"}],
                                       logprobs=True, top_logprobs=2, **args)
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    text = api.completions.create(prompt="The canary", logprobs=2, **args)
    lp = text.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == 4 and len(lp.top_logprobs or []) == 4
    streamed = [c for c in api.completions.create(prompt="The canary", logprobs=2, stream=True,
                                                  **args) if c.choices]
    tokens = [t for c in streamed if c.choices[0].logprobs
              for t in c.choices[0].logprobs.tokens or []]
    assert tokens == lp.tokens


def test_our_metrics_and_vllms_own_move(vllm_server: Any) -> None:
    api = client(vllm_server)
    for _ in range(2):  # streamed: time to first token and token gaps are seen on streams
        list(api.completions.create(model="tiny-v2", prompt="hi", max_tokens=4, stream=True,
                                    extra_body={"ignore_eos": True}))
    ours = metric_samples(vllm_server.server.metrics_url)
    ok = [s for s in ours if s.name == "vllm_requests_total" and s.labels["status"] == "200"]
    assert ok and ok[0].value >= 2
    assert ok[0].labels["version"] == "v2" and ok[0].labels["model"] == "tiny-v2"
    tokens = [s for s in ours if s.name == "vllm_token_latency_seconds_count"]
    assert tokens and tokens[0].value >= 6 and tokens[0].labels["version"] == "v2"

    theirs = {s.name: s for s in metric_samples(f"{vllm_server.child_url}/metrics")}
    assert theirs["vllm:e2e_request_latency_seconds_count"].value >= 2
    assert theirs["vllm:time_to_first_token_seconds_count"].value >= 2
    assert theirs["vllm:generation_tokens_total"].value >= 8
    assert "vllm:num_requests_running" in theirs


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.ends_shared_vllm
def test_serve_exits_non_zero_when_vllm_dies(vllm_server: Any) -> None:
    """Runs last in the session (the marker): it ends the shared server."""
    serve = vllm_server.server.proc
    (child,) = _children(serve.pid)
    os.kill(child, signal.SIGKILL)
    assert serve.wait(timeout=60) == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{vllm_server.server.url}/health", timeout=5)
    with pytest.raises(ProcessLookupError):  # vLLM's engine-core processes went with it
        os.killpg(child, 0)
