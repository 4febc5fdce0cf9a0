"""The simulator's vLLM request shapes, each with its right value: stop strings (vLLM's
hold-back and cut), logprobs, echo, prompt lists, token ids, n, JSON outputs, tool calls.

References: vLLM 0.32 vllm/v1/engine/detokenizer.py (stop strings), vllm/logprobs.py (the
logprob dict: sampled token first, then ranks 1..k), vllm/entrypoints/openai/completion/
serving.py (choice index = prompt index * n + output index; echo = prompt + output) and
chat_completion/serving.py (tool calls, finish_reason "tool_calls" except for a named
function).
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest

from vllm_canary.server.engines import simplan
from vllm_canary.server.engines.base import Delta, EngineError, GenerationRequest, ToolSpec, Usage
from vllm_canary.server.engines.sim import SimEngine, SimProfile
from vllm_canary.server.wire import ChoiceState, chat_logprobs, completion_logprobs

FAST = SimProfile(ttft_s=0, prefill_s_per_token=0, tpot_s=0, jitter=0, max_model_len=512)


async def run(request: GenerationRequest) -> tuple[dict[int, ChoiceState], Usage]:
    states: dict[int, ChoiceState] = {}
    usage = None
    async for ev in SimEngine("v1", "m", FAST).generate(request):
        if isinstance(ev, Delta):
            states.setdefault(ev.index, ChoiceState()).add(ev)
        else:
            usage = ev
    assert usage is not None
    return states, usage


def completion(**kw: Any) -> GenerationRequest:
    return GenerationRequest(**{"kind": "completion", "model": "m", "prompt": "hello",
                                "max_tokens": 12, **kw})


def chat(content: str = "what is the weather in Paris?", **kw: Any) -> GenerationRequest:
    messages = kw.pop("messages", [{"role": "user", "content": content}])
    return GenerationRequest(**{"kind": "chat", "model": "m", "prompt": f"user: {content}",
                                "messages": messages, "max_tokens": None, **kw})


# -- stop strings ------------------------------------------------------------------------
def test_a_stop_string_spanning_two_tokens_is_held_back_and_cut() -> None:
    tokens = [" the", " model", " answer", " is"]
    pieces, stop = simplan.stop_pieces(tokens, [" model answer"], include=False)
    # vLLM holds back len(stop) - 1 = 12 chars, so " model" never leaks; the text is cut
    # at the stop's start and the token that completed it is the last one counted.
    assert pieces == ["", "", " the"] and stop == " model answer"
    pieces, stop = simplan.stop_pieces(tokens, [" model answer"], include=True)
    assert pieces == [" the", " model", " answer"] and stop == " model answer"


def test_held_back_text_is_flushed_when_no_stop_matches() -> None:
    pieces, stop = simplan.stop_pieces([" the", " answer", " is"], ["answer was"], False)
    assert pieces == ["", " t", "he answer is"] and stop is None
    # Of two stop strings the one that completes first wins (vLLM's check_stop_strings).
    _, stop = simplan.stop_pieces([" a", " b", " c"], [" b c", "a b"], False)
    assert stop == "a b"


async def test_engine_cuts_a_spanning_stop_and_reports_it() -> None:
    full, _ = await run(completion(max_tokens=40, seed=1))
    words = full[0].text.split(" ")
    stop = f" {words[3]} {words[4]}"  # two tokens
    cut, usage = await run(completion(max_tokens=40, seed=1, stop=[stop]))
    assert cut[0].text == full[0].text[: full[0].text.index(stop)]
    assert (cut[0].finish, cut[0].stop_reason) == ("stop", stop)
    assert usage.completion_tokens == 5  # up to the token that completed the stop


# -- logprobs ----------------------------------------------------------------------------
async def test_completion_logprobs_are_the_sim_distribution_in_vllm_order() -> None:
    engine = SimEngine("v1", "m", FAST)
    states, _ = await run(completion(logprobs=2))
    entries = states[0].logprobs
    assert len(entries) == 12
    weights: dict[str, float] = {}
    for rank, word in enumerate(engine._vocab):  # the sampler's weights at temperature 1
        weights[word] = weights.get(word, 0.0) + 1 / (rank + 1)
    total = sum(weights.values())
    best = sorted(weights, key=lambda w: -weights[w])[:2]
    for e in entries:
        word = e.token.strip().rstrip(".").lower()
        assert e.logprob == pytest.approx(math.log(weights[word] / total), abs=1e-6)
        assert e.top[0] == (e.token, e.logprob)  # sampled first
        alts = [w.strip().rstrip(".").lower() for w, _ in e.top[1:]]
        assert alts == [w for w in best if w != word]  # then ranks 1..k, no duplicate
    body, end = completion_logprobs(entries, 2)
    assert body["tokens"] == [e.token for e in entries]
    assert "".join(body["tokens"]) == states[0].text
    assert body["text_offset"] == [sum(len(e.token) for e in entries[:i]) for i in range(12)]
    assert end == len(states[0].text)
    assert all(len(top) <= 3 for top in body["top_logprobs"])  # k + 1 (OpenAI's rule)


def test_chat_logprobs_shape_has_bytes_and_k_alternatives() -> None:
    entry = simplan.token_logprob(" model", 3, simplan.Vocabulary(["the", "model", "a"]),
                                  key="k")
    [content] = chat_logprobs([entry], 2)["content"]
    assert content["token"] == " model" and content["bytes"] == list(b" model")
    assert [t["token"] for t in content["top_logprobs"]] == [" model", " the"]
    assert content["top_logprobs"][0]["logprob"] == content["logprob"] < 0


async def test_echo_returns_the_prompt_with_its_logprobs() -> None:
    states, usage = await run(completion(prompt="the model is", echo=True, logprobs=1,
                                         max_tokens=3))
    text = states[0].text
    assert text.startswith("the model is") and usage.prompt_tokens == 3
    body, _ = completion_logprobs(states[0].logprobs, 1)
    assert body["tokens"][:3] == ["the", " model", " is"]
    assert body["token_logprobs"][0] is None and body["top_logprobs"][0] is None
    assert "".join(body["tokens"]) == text
    zero, usage = await run(completion(prompt="the model is", echo=True, max_tokens=0))
    assert zero[0].text == "the model is" and zero[0].finish == "length"


# -- prompts, token ids, n --------------------------------------------------------------
async def test_prompt_lists_number_choices_prompt_major_as_vllm() -> None:
    both, usage = await run(completion(prompts=("hello", "the model"), n=2))
    alone, _ = await run(completion(prompt="the model", n=2))
    assert sorted(both) == [0, 1, 2, 3]
    assert [both[2].text, both[3].text] == [alone[0].text, alone[1].text]
    assert both[0].text != both[1].text  # n choices differ
    assert usage.prompt_tokens == 1 + 2  # each prompt once, not n times
    assert usage.completion_tokens == 4 * 12


async def test_token_id_prompts_are_decoded_and_counted() -> None:
    vocab = SimEngine("v1", "m", FAST).vocabulary
    states, usage = await run(completion(prompts=((0, 1, 31999),), echo=True, max_tokens=2))
    assert states[0].text.startswith(vocab.base[0] + vocab.base[1] + " t31999")
    assert usage.prompt_tokens == 3
    with pytest.raises(EngineError) as err:
        await run(completion(prompts=((5, 32000),)))
    assert err.value.status == 400 and "out of vocabulary" in err.value.message


# -- JSON and tools -----------------------------------------------------------------------
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3, "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "place": {"$ref": "#/$defs/place"},
        "ok": {"type": "boolean"}, "score": {"type": "number", "exclusiveMaximum": 1},
    },
    "required": ["city", "unit", "place"],
    "additionalProperties": False,
    "$defs": {"place": {"type": "object", "properties": {"lat": {"type": "number"}},
                        "required": ["lat"]}},
}


async def test_json_schema_answers_validate() -> None:
    for seed in range(5):
        states, _ = await run(chat(json_schema=SCHEMA, seed=seed))
        jsonschema.validate(json.loads(states[0].text), SCHEMA)
        assert states[0].finish == "stop"
    states, _ = await run(chat(json_schema={"type": "object"}))
    assert isinstance(json.loads(states[0].text), dict) and json.loads(states[0].text)


WEATHER = ToolSpec("get_weather", SCHEMA)
CLOCK = ToolSpec("get_time", {"type": "object", "properties": {"tz": {"type": "string"}}})


@pytest.mark.parametrize(("choice", "name", "finish"), [
    ("required", None, "tool_calls"), ("function", "get_time", "stop"),
    ("auto", None, "tool_calls")])
async def test_tool_calls_validate_against_the_function_schema(choice: str, name: str | None,
                                                               finish: str) -> None:
    states, _ = await run(chat(tools=(CLOCK, WEATHER), tool_choice=choice, tool_name=name))
    state = states[0]
    # "required"/"auto" pick the tool named in the user's message, a named choice that one.
    assert state.tool_name == (name or "get_weather")
    assert state.tool_id and state.tool_id.startswith("chatcmpl-tool-")
    schema = CLOCK.parameters if name else SCHEMA
    jsonschema.validate(json.loads(state.arguments), schema)
    assert state.text == "" and state.finish == finish


async def test_auto_answers_in_text_after_a_tool_result_and_none_never_calls() -> None:
    after_tool = [{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                  {"role": "tool", "tool_call_id": "1", "content": "sunny"}]
    states, _ = await run(chat(messages=after_tool, tools=(WEATHER,), tool_choice="auto"))
    assert states[0].tool_name is None and states[0].text and states[0].finish == "stop"
    states, _ = await run(chat(tools=(WEATHER,), tool_choice="none"))
    assert states[0].tool_name is None and states[0].text


async def test_unsatisfiable_schema_is_a_400() -> None:
    schema = {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 100}]}
    with pytest.raises(EngineError) as err:
        await run(chat(json_schema=schema))
    assert err.value.status == 400 and "could not satisfy the schema" in err.value.message


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "array", "minItems": 100000}, "minItems 100000"),
    ({"type": "string", "minLength": 10**9}, "minLength"),
    ({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"},
                                                       "b": {"$ref": "#/$defs/n"}}}},
      "$ref": "#/$defs/n"}, "nests deeper"),
    ({"type": "object", "properties": {f"p{i}": {"type": "array", "minItems": 200, "items": {
        "type": "integer"}} for i in range(20)}}, "more than 2000 values"),
    ({"type": "number", "minimum": 1e300, "multipleOf": 1e-300}, "OverflowError"),
])
async def test_schemas_asking_for_unbounded_work_are_a_400(schema: dict, says: str) -> None:
    with pytest.raises(EngineError) as err:
        await run(chat(json_schema=schema))
    assert err.value.status == 400 and says in err.value.message


async def test_required_properties_without_a_description_are_generated() -> None:
    schema = {"type": "object", "required": ["x", "y"], "properties": {"x": {"type": "integer"}},
              "additionalProperties": {"type": "boolean"}}
    states, _ = await run(chat(json_schema=schema))
    value = json.loads(states[0].text)
    jsonschema.validate(value, schema)
    assert isinstance(value["y"], bool)
