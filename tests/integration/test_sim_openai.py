"""The sim front over HTTP as client code sees it: the official `openai` client for tool calls
(streamed and not) and logprobs, and the stop string that spans tokens, streamed and not.

The shapes follow vLLM 0.32 (vllm/entrypoints/openai/chat_completion/serving.py: a named
function's call finishes with "stop", "required" with "tool_calls"; tool calls stream as
`tool_calls` deltas, id and name on the first) and OpenAI's API reference (chat logprobs
`content[{token, logprob, bytes, top_logprobs}]`, completion logprobs `tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest
from aiohttp.test_utils import TestServer

from vllm_canary.server.app import ModelServer
from vllm_canary.server.engines import build_engine
from vllm_canary.server.settings import ServeSettings

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit"],
}
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}},
              {"type": "function", "function": {"name": "get_time"}}]
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    settings = ServeSettings(latency_factor=0.01, max_model_len=512)
    server = ModelServer(settings, build_engine(settings))
    await server.start()
    http = TestServer(server.app(), handler_cancellation=True)
    await http.start_server()
    api = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="unused",
                             max_retries=0)
    yield api
    await api.close()
    await http.close()
    await server.close()


async def test_tool_call_not_streamed(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="sim-llm", messages=ASK, tools=TOOLS,
                                                tool_choice="required")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    named = await client.chat.completions.create(
        model="sim-llm", messages=ASK, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.choices[0].finish_reason == "stop"  # vLLM and OpenAI: a named call stops
    assert (named.choices[0].message.tool_calls or [])[0].function.name == "get_time"


async def test_tool_call_streamed_matches_the_whole_answer(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(model="sim-llm", messages=ASK, tools=TOOLS,
                                                 tool_choice="required", seed=5)
    stream = await client.chat.completions.create(model="sim-llm", messages=ASK, tools=TOOLS,
                                                  tool_choice="required", seed=5, stream=True)
    names, ids, arguments, finish, roles = [], [], "", None, 0
    async for chunk in stream:
        for c in chunk.choices:
            roles += c.delta.role == "assistant"
            for tc in c.delta.tool_calls or []:
                assert tc.index == 0
                if tc.id:
                    ids.append(tc.id)
                    names.append(tc.function.name if tc.function else None)
                arguments += (tc.function.arguments if tc.function else "") or ""
            finish = c.finish_reason or finish
    assert roles == 1 and names == ["get_weather"] and len(ids) == 1
    assert finish == "tool_calls"
    call = (whole.choices[0].message.tool_calls or [])[0]
    assert arguments == call.function.arguments
    jsonschema.validate(json.loads(arguments), PARAMS)


async def test_logprobs_through_the_openai_client(client: openai.AsyncOpenAI) -> None:
    resp = await client.completions.create(model="sim-llm", prompt="the model", max_tokens=5,
                                           logprobs=2, echo=True)
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.tokens[:2] == ["the", " model"] and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:],
                                 strict=True):
        assert value is not None and value < 0 and top is not None
        assert top[token] == value and 1 <= len(top) <= 3
    chat = await client.chat.completions.create(model="sim-llm", messages=ASK, max_tokens=4,
                                                logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content if chat.choices[0].logprobs else None
    assert content and len(content) == 4
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    for c in content:
        assert c.bytes == list(c.token.encode()) and len(c.top_logprobs) == 3
        values = [t.logprob for t in c.top_logprobs]
        assert c.logprob in values or c.logprob < min(values)
    streamed = await client.chat.completions.create(model="sim-llm", messages=ASK,
                                                    max_tokens=4, logprobs=True,
                                                    top_logprobs=3, stream=True)
    tokens = [c.token async for chunk in streamed for ch in chunk.choices
              for c in ((ch.logprobs.content or []) if ch.logprobs else [])]
    assert tokens == [c.token for c in content]


@pytest.mark.parametrize(("stream", "include"), [(False, False), (True, False), (True, True)])
async def test_stop_string_spanning_tokens_never_leaks(client: openai.AsyncOpenAI,
                                                       stream: bool, include: bool) -> None:
    kw: Any = {"model": "sim-llm", "prompt": "hello", "max_tokens": 40, "seed": 2}
    full = (await client.completions.create(**kw)).choices[0].text
    words = full.split(" ")
    stop = f" {words[2]} {words[3]}"  # two tokens: the old stream sent the first one
    expected = full[: full.index(stop) + (len(stop) if include else 0)]
    if include:  # vLLM's include_stop_str_in_output: cut at the stop's end instead
        kw["extra_body"] = {"include_stop_str_in_output": True}
    if not stream:
        choice = (await client.completions.create(**kw, stop=[stop])).choices[0]
        text, finish, reason = choice.text, choice.finish_reason, choice.model_extra
    else:
        text, finish, reason = "", None, {}
        async for chunk in await client.completions.create(**kw, stop=[stop], stream=True):
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
                if c.finish_reason:
                    reason = c.model_extra
    assert text == expected and (stop in text) == include
    assert finish == "stop"
    assert (reason or {}).get("stop_reason") == stop  # vLLM's field: the matched string
