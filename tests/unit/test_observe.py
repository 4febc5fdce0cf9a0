"""The relay's observer on recorded answers: the one SSE decoder, and what an Observation
learns from a stream however its bytes are split (mid-event, mid-line, mid-UTF-8 character)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vllm_canary.server.observe import Observation, SSEDecoder, endpoint_label


def sse(*events: Any) -> bytes:
    """Events as vLLM writes them: raw UTF-8 JSON (not \\u escapes), one per `data:` line."""
    out = b""
    for e in events:
        data = e if isinstance(e, bytes) else json.dumps(e, ensure_ascii=False).encode()
        out += b"data: " + data + b"\n\n"
    return out


def chat_chunk(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


# A chat stream as vLLM 0.32 sends it (recorded shape): role first, one token per delta,
# non-ASCII text, an empty closing delta with the finish reason, no usage (no include_usage).
CHAT_STREAM = sse(
    chat_chunk(role="assistant", content=""),
    chat_chunk(content="Caf"), chat_chunk(content="é"), chat_chunk(content=" 🐤"),
    chat_chunk(content=" ok"), chat_chunk(finish="stop", content=""), b"[DONE]",
)

# Tool calls streamed as OpenAI and vLLM's tool parsers send them: the call's id, type and
# name first, then the arguments in pieces (platform.openai.com/docs/guides/function-calling).
TOOL_STREAM = sse(
    chat_chunk(role="assistant", content=None),
    chat_chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]),
    chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": "{\"city\": "}}]),
    chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": "\"Zürich\"}"}}]),
    chat_chunk(finish="tool_calls"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
     "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}},
    b"[DONE]",
)


def observe_split(kind: str, stream: bytes, size: int) -> Observation:
    obs = Observation(kind)
    for i in range(0, len(stream), size):
        obs.feed(stream[i:i + size])
    obs.end()
    return obs


def summary(obs: Observation) -> tuple[Any, ...]:
    return (obs.texts, obs.finish, obs.tool_call_list(), obs.usage, obs.deltas,
            obs.completion_tokens(), obs.response_id)


# -- the decoder -------------------------------------------------------------------------------


def test_sse_decoder_joins_data_lines_and_skips_comments_and_other_fields() -> None:
    decoder = SSEDecoder()
    lines = [b": keep-alive\n", b"event: message\r\n", b"id: 7\n", b"data: {\"a\":\n",
             b"data: 1}\n", b"\n", b"data:[DONE]\n", b"\n"]
    out = [d for d in map(decoder.feed_line, lines) if d is not None]
    assert out == [b'{"a":\n1}', b"[DONE]"]


def test_sse_decoder_gives_the_same_events_however_the_bytes_are_split() -> None:
    stream = b'data: {"x": 1}\r\n\r\n: ping\n\ndata: {"x": 2}\n\ndata: [DONE]\n\n'
    whole = SSEDecoder().feed(stream)
    assert whole == [b'{"x": 1}', b'{"x": 2}', b"[DONE]"]
    for size in (1, 2, 3, 7):
        decoder = SSEDecoder()
        parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert [d for part in parts for d in decoder.feed(part)] == whole


def test_sse_decoder_reads_one_event_per_read_as_any_other_split() -> None:
    events = [b"data: {}\n\n", b"data: [DONE]\n\n", b"data:x\n\n", b"data: a\r\n\r\n",
              b"data: tail", b"\n\n"]
    decoder = SSEDecoder()
    assert [d for e in events for d in decoder.feed(e)] == [b"{}", b"[DONE]", b"x", b"a",
                                                              b"tail"]


def test_sse_decoder_flushes_an_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x") == []
    assert decoder.flush() == b"x"
    assert decoder.flush() is None


# -- streams -----------------------------------------------------------------------------------


def test_a_chat_stream_gives_text_finish_and_one_token_per_delta() -> None:
    obs = observe_split("chat", CHAT_STREAM, len(CHAT_STREAM))
    assert obs.texts == {0: "Café 🐤 ok"}
    assert obs.finish == {0: "stop"}
    assert obs.deltas == 4 and obs.completion_tokens() == 4  # no usage: counted by deltas
    assert obs.prompt_tokens() is None and obs.usage is None
    assert obs.response_id == "chatcmpl-1"
    assert obs.ttft() is not None and obs.ttft() >= 0


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_any_split_of_the_bytes_gives_the_same_observation(size: int) -> None:
    # size 1 splits every multi-byte character ("é", "ü", the emoji) between two reads.
    for kind, stream in (("chat", CHAT_STREAM), ("chat", TOOL_STREAM)):
        whole = observe_split(kind, stream, len(stream))
        assert summary(observe_split(kind, stream, size)) == summary(whole)


def test_split_mid_utf8_character_and_mid_event() -> None:
    at = CHAT_STREAM.index("é".encode()) + 1  # between the two bytes of "é"
    obs = Observation("chat")
    obs.feed(CHAT_STREAM[:at])
    assert obs.texts == {0: "Caf"}  # the event with the split character is not complete yet
    obs.feed(CHAT_STREAM[at:])
    assert obs.texts == {0: "Café 🐤 ok"}


def test_tool_call_arguments_are_joined_and_usage_wins_over_deltas() -> None:
    obs = observe_split("chat", TOOL_STREAM, 7)
    assert obs.tool_call_list() == [{"choice": 0, "name": "get_weather",
                                     "arguments": '{"city": "Zürich"}'}]
    assert obs.finish_reasons() == ["tool_calls"]
    assert obs.completion_tokens() == 9 and obs.prompt_tokens() == 20
    assert obs.texts == {}


def test_a_completion_stream_with_two_choices() -> None:
    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": "cmpl-9", "object": "text_completion",
                "choices": [{"index": index, "text": text, "finish_reason": finish}]}

    stream = sse(chunk(0, "a"), chunk(1, "x"), chunk(0, "b"), chunk(1, "y", "length"),
                 chunk(0, "", "stop"), b"[DONE]")
    gaps: list[float] = []
    obs = Observation("completion", on_gap=gaps.append)
    obs.feed(stream)
    assert obs.texts == {0: "ab", 1: "xy"}
    assert obs.finish_reasons() == ["stop", "length"]
    assert obs.completion_tokens() == 4
    assert len(gaps) == 2  # one inter-token gap per choice


def test_an_error_inside_the_stream_is_seen_with_its_status() -> None:
    err = {"error": {"message": "This model's maximum context length is 256 tokens.",
                     "type": "BadRequestError", "param": None, "code": 400}}
    obs = observe_split("completion", sse(err, b"[DONE]"), 3)
    assert obs.error_status == 400 and "maximum context length" in (obs.error or "")


def test_an_event_without_its_blank_line_is_taken_at_the_end() -> None:
    obs = Observation("completion")
    obs.feed(b'data: {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}')
    assert obs.texts == {}
    obs.end()
    assert obs.texts == {0: "hi"} and obs.finish == {0: "stop"}


def test_non_json_events_are_ignored_not_fatal() -> None:
    obs = Observation("chat")
    obs.feed(b"data: not json\n\n: comment\n\n" + CHAT_STREAM)
    assert obs.texts == {0: "Café 🐤 ok"}


def test_a_responses_stream() -> None:
    stream = (
        b"event: response.created\n" + sse({"type": "response.created",
                                            "response": {"id": "resp_1", "status": "in_progress"}})
        + b"event: response.output_text.delta\n"
        + sse({"type": "response.output_text.delta", "delta": "Hel", "output_index": 0})
        + b"event: response.output_text.delta\n"
        + sse({"type": "response.output_text.delta", "delta": "lo", "output_index": 0})
        + b"event: response.completed\n"
        + sse({"type": "response.completed", "response": {
            "id": "resp_1", "status": "completed",
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}})
    )
    obs = observe_split("responses", stream, 4)
    assert obs.texts == {0: "Hello"} and obs.finish == {0: "completed"}
    assert (obs.prompt_tokens(), obs.completion_tokens()) == (5, 2)
    assert obs.response_id == "resp_1"


# -- whole answers -----------------------------------------------------------------------------


def test_a_whole_chat_answer_with_tool_calls() -> None:
    answer = {"id": "chatcmpl-2", "choices": [{
        "index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}
    obs = Observation("chat")
    assert obs.body(json.dumps(answer).encode()) == answer
    assert obs.tool_call_list() == [{"choice": 0, "name": "get_weather",
                                     "arguments": '{"city": "Paris"}'}]
    assert obs.finish_reasons() == ["tool_calls"] and obs.texts == {0: ""}
    assert (obs.prompt_tokens(), obs.completion_tokens()) == (12, 8)
    assert obs.ttft() is None  # a whole answer has no time to first token


def test_a_whole_responses_answer() -> None:
    answer = {"id": "resp_2", "object": "response", "status": "incomplete",
              "incomplete_details": {"reason": "max_output_tokens"},
              "output": [{"type": "reasoning", "summary": []},
                         {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
                         {"type": "function_call", "name": "f", "arguments": "{}"}],
              "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}
    obs = Observation("responses")
    obs.body(json.dumps(answer).encode())
    assert obs.texts == {0: "Hi"} and obs.finish == {0: "max_output_tokens"}
    assert obs.tool_call_list() == [{"choice": 0, "name": "f", "arguments": "{}"}]
    assert obs.completion_tokens() == 4


def test_a_body_that_is_not_a_json_object_is_not_observed() -> None:
    obs = Observation("completion")
    assert obs.body(b"<html>bad gateway</html>") is None
    assert obs.body(b"[1, 2]") is None
    assert obs.completion_tokens() is None and obs.texts == {}


def test_endpoint_labels_are_vllm_routes_or_other() -> None:
    assert endpoint_label("/tokenize") == "/tokenize"
    assert endpoint_label("/v1/chat/completions") == "/v1/chat/completions"
    assert endpoint_label("/v1/responses/resp_123") == "/v1/responses/{response_id}"
    assert endpoint_label("/v1/responses/resp_123/cancel") == "/v1/responses/{response_id}/cancel"
    assert endpoint_label("/v1/responses/a/b/c") == "other"
    assert endpoint_label("/wp-admin/install.php") == "other"
    assert endpoint_label("/v1/completions/") == "other"
