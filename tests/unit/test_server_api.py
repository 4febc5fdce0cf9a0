"""Request validation: every bad input is a 4xx ApiError naming the parameter."""

from __future__ import annotations

import pytest

from vllm_canary.server.api import ApiError, decode_json, parse_request


def parse(kind: str, data: dict, limit: int = 1000):
    return parse_request(kind, data, default_model="m", max_tokens_limit=limit,  # type: ignore[arg-type]
                         request_id="r1")


def test_completion_defaults_follow_openai() -> None:
    gen, body = parse("completion", {"prompt": "hello"})
    assert (gen.model, gen.prompt, gen.max_tokens, gen.n, gen.stop) == ("m", "hello", 16, 1, [])
    assert body.stream is False


def test_chat_renders_messages_and_keeps_them() -> None:
    gen, _ = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert gen.prompt.endswith("user: hi\nassistant:")
    assert gen.messages == [{"role": "user", "content": "hi"}]
    assert gen.max_tokens == 3


def test_unknown_fields_pass_through_to_engines() -> None:
    gen, _ = parse("completion", {"prompt": "x", "logprobs": 2, "top_k": 5})
    assert gen.extra == {"logprobs": 2, "top_k": 5}


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
        ({"prompt": ["a", "b"]}, "prompt"),
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
