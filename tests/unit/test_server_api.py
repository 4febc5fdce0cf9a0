"""Request validation: every bad input is a 4xx ApiError naming the parameter; what the
simulator does not implement is a 400 saying so; null means the default."""

from __future__ import annotations

import pytest

from vllm_canary.server.api import ApiError, decode_json, parse_request


def parse(kind: str, data: dict, limit: int = 1000):
    return parse_request(kind, data, default_model="m", max_tokens_limit=limit,  # type: ignore[arg-type]
                         request_id="r1")


def test_completion_defaults_follow_openai() -> None:
    gen, body = parse("completion", {"prompt": "hello"})
    assert (gen.model, gen.prompt, gen.max_tokens, gen.n, gen.stop) == ("m", "hello", 16, 1, [])
    assert (gen.temperature, gen.top_p, gen.echo, gen.logprobs) == (1.0, 1.0, False, None)
    assert not body.stream


# OpenAI's schema marks these nullable (openai-openapi openapi.yaml, CreateCompletionRequest /
# CreateChatCompletionRequest `nullable: true`); vLLM maps a null max_tokens to its default
# (completion/protocol.py normalize_null_max_tokens).
NULLS = {"temperature": None, "top_p": None, "n": None, "stream": None, "max_tokens": None,
         "logprobs": None, "echo": None, "stop": None, "seed": None, "stream_options": None,
         "presence_penalty": None, "frequency_penalty": None, "logit_bias": None,
         "user": None, "suffix": None, "best_of": None}


def test_null_means_the_default() -> None:
    gen, body = parse("completion", {"prompt": "hello", **NULLS})
    assert (gen.max_tokens, gen.temperature, gen.top_p, gen.n, gen.stop, gen.echo) == (
        16, 1.0, 1.0, 1, [], False)
    assert not body.stream
    chat = {k: v for k, v in NULLS.items() if k not in ("echo", "suffix", "best_of")}
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}], **chat,
                            "top_logprobs": None, "tools": None, "tool_choice": None,
                            "max_completion_tokens": None, "response_format": None})
    assert (gen.max_tokens, gen.temperature, gen.n, gen.logprobs, gen.tool_choice) == (
        None, 1.0, 1, None, "none")


def test_chat_renders_messages_and_keeps_them() -> None:
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert gen.prompt.endswith("user: hi\nassistant:")
    assert gen.messages == [{"role": "user", "content": "hi"}]
    assert gen.max_tokens == 3


def test_what_the_sim_does_not_implement_is_a_400_naming_it() -> None:
    for field, value in [("top_k", 5), ("logit_bias", {"11": 5}), ("presence_penalty", 0.5),
                         ("suffix", "end"), ("temprature", 0.3), ("min_tokens", 3)]:
        with pytest.raises(ApiError) as err:
            parse("completion", {"prompt": "x", field: value})
        assert err.value.status == 400 and err.value.param == field
        assert err.value.code == "unsupported_parameter"
        assert f"does not implement the {'field' if field == 'temprature' else 'setting'} "\
               f"'{field}'" in err.value.message


def test_neutral_values_of_unimplemented_settings_are_accepted() -> None:
    # What clients send by default (e.g. LangChain: presence_penalty 0, logit_bias {}).
    gen, _ = parse("completion", {"prompt": "x", "presence_penalty": 0, "frequency_penalty": 0.0,
                                  "logit_bias": {}, "top_k": -1, "user": "u1",
                                  "metadata": {"a": "b"}})
    assert gen.prompt == "x"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1001}, "max_tokens"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": ["a", [1, 2]]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "echo": "yes"}, "echo"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": ["x"] * 9, "n": 8}, "prompt"),
        ({"prompt": "x", "response_format": {"type": "json_schema"}}, "response_format"),
        ({"prompt": "x", "response_format": {"type": "structural_tag"}}, "response_format"),
        ({"prompt": "x", "stream": True,
          "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
        ({"prompt": "x", "stop": ""}, "stop"),  # vLLM: "stop cannot contain an empty string."
        ({"prompt": "x", "stop": ["a", ""]}, "stop"),
    ],
)
def test_bad_completion_input_is_400_naming_the_param(data: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        parse("completion", data)
    assert err.value.status == 400
    assert (err.value.param or "").startswith(param)
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_bad_chat_role_is_400() -> None:
    with pytest.raises(ApiError) as err:
        parse("chat", {"messages": [{"role": "robot", "content": "x"}]})
    assert err.value.status == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b"\xff\xfe", b"prompt=hello"])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(ApiError) as err:
        decode_json(raw)
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
         "messages.0.content", "only text content parts, not 'image_url'"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages.0.content", "needs a string 'text'"),
        ({"messages": [{"role": "user", "content": ["hi"]}]},
         "messages.0.content", "must be an object with a 'type'"),
        ({"top_logprobs": 2}, "top_logprobs", "`logprobs` must be set to true"),
        ({"tools": []}, "tools", "must not be an empty array"),
        ({"tool_choice": "required"}, "tool_choice", "`tools` must be set"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice", "does not match any of the specified `tools`"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]+$"}}}}}],
          "tool_choice": "required"}, "tools", "schema keyword 'pattern'"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}}}},
         "response_format", "schema keyword 'not'"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "nonsense"}}}},
         "response_format", "not a valid JSON Schema"),
        ({"echo": True}, "echo", "does not implement the setting 'echo'"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ],
)
def test_bad_chat_shapes_are_400_saying_why(extra: dict, param: str, says: str) -> None:
    data = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ApiError) as err:
        parse("chat", data)
    assert err.value.status == 400
    assert err.value.param == param
    assert says in err.value.message


def test_prompt_shapes_and_tool_choice_defaults() -> None:
    gen, _ = parse("completion", {"prompt": ["a", "b"], "n": 2})
    assert gen.prompts == ("a", "b") and gen.prompt == "a"
    gen, _ = parse("completion", {"prompt": [1, 2, 3]})
    assert gen.prompts == ((1, 2, 3),)
    gen, _ = parse("completion", {"prompt": [[1, 2], [3]]})
    assert gen.prompts == ((1, 2), (3,))
    tools = [{"type": "function", "function": {"name": "f"}}]
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "tools": tools})
    assert gen.tool_choice == "auto"  # vLLM: tools without tool_choice means "auto"
    assert gen.tools[0].parameters == {"type": "object", "properties": {}}
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "tools": tools,
                            "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert (gen.tool_choice, gen.tool_name) == ("function", "f")
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}],
                            "response_format": {"type": "json_object"}})
    assert gen.json_schema == {"type": "object"}
