"""`serve --engine upstream` in front of a real `serve --engine sim`, driven by the official
`openai` client as a user would: the relayed answers are the upstream's, streamed or not."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_canary import procs


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def sample_values(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


@pytest.fixture
def pair(serve_process: Any) -> tuple[Any, Any]:
    """A sim server (the upstream) and `serve --engine upstream` in front of it."""
    sim = serve_process("v1")
    front = serve_process("v1", "--upstream", sim.url, engine="upstream")
    return sim, front


def test_completions_match_the_upstream_streamed_or_not(pair: tuple[Any, Any]) -> None:
    sim, front = pair
    direct = client_for(sim.url).completions.create(model="sim-llm", prompt="hello", max_tokens=8)
    client = client_for(front.url)
    raw = client.completions.with_raw_response.create(
        model="sim-llm", prompt="hello", max_tokens=8
    )
    proxied = raw.parse()
    assert raw.headers["x-model-version"] == "v1"
    assert proxied.choices[0].text == direct.choices[0].text != ""
    assert proxied.usage is not None and proxied.usage.completion_tokens == 8

    stream = client.completions.create(
        model="sim-llm", prompt="hello", max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == direct.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_chat_streamed_and_not_with_two_choices(pair: tuple[Any, Any]) -> None:
    sim, front = pair
    messages = [{"role": "user", "content": "What is a canary release?"}]
    direct = client_for(sim.url).chat.completions.create(
        model="sim-llm", messages=messages, max_tokens=6, n=2
    )
    client = client_for(front.url)
    answer = client.chat.completions.create(model="sim-llm", messages=messages, max_tokens=6, n=2)
    assert [c.message.content for c in answer.choices] == [
        c.message.content for c in direct.choices
    ]
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in client.chat.completions.create(
        model="sim-llm", messages=messages, max_tokens=6, n=2, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in direct.choices]
    assert set(finish) == {0, 1}


def test_upstream_context_length_400_reaches_the_client(pair: tuple[Any, Any]) -> None:
    _, front = pair
    with pytest.raises(openai.BadRequestError) as info:
        client_for(front.url).completions.create(
            model="sim-llm", prompt="word " * 5000, max_tokens=5
        )
    assert info.value.status_code == 400
    assert "maximum context length" in str(info.value.message)


def test_front_metrics_count_proxied_requests(pair: tuple[Any, Any]) -> None:
    _, front = pair
    client = client_for(front.url)
    for _ in range(3):
        client.completions.create(model="sim-llm", prompt="hi", max_tokens=2)
    for _ in range(2):  # time to first token is seen on streamed answers only
        list(client.completions.create(model="sim-llm", prompt="hi", max_tokens=3, stream=True))
    counts = sample_values(front.metrics_url, "vllm_requests_total")
    ok = {k: v for k, v in counts.items() if dict(k)["status"] == "200"}
    assert list(ok.values()) == [5.0]
    assert dict(next(iter(ok))) == {"status": "200", "version": "v1", "model": "sim-llm"}
    ttft = sample_values(front.metrics_url, "vllm_time_to_first_token_seconds_count")
    assert list(ttft.values()) == [2.0]
    tokens = sample_values(front.metrics_url, "vllm_generation_tokens_total")
    assert list(tokens.values()) == [3 * 2 + 2 * 3]  # usage when the answer has it, else deltas


def test_front_turns_unready_when_the_upstream_goes_away(pair: tuple[Any, Any]) -> None:
    sim, front = pair
    sim.stop()
    deadline = time.monotonic() + 20  # the health probe runs every 2 s
    while procs.http_ok(f"{front.url}/health") and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{front.url}/health", timeout=5)
    assert info.value.code == 503
    with pytest.raises(openai.APIStatusError) as err:
        client_for(front.url).completions.create(model="sim-llm", prompt="hi", max_tokens=2)
    assert err.value.status_code in (502, 503)
