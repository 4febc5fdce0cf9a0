"""The simulator's answers in vLLM's wire shapes (vLLM 0.32,
vllm/entrypoints/openai/{completion,chat_completion}/{protocol,serving}.py).

- Whole answers carry the fields vLLM's `model_dump()` writes (nulls included):
  `stop_reason`, `token_ids`, `prompt_logprobs`, `routed_experts`, `service_tier`,
  `system_fingerprint` (here "vllm-canary-sim-<version>"), `kv_transfer_params`,
  `ec_transfer_params`, `metrics`, usage details, and the chat message's `refusal`,
  `annotations`, `audio`, `function_call`, `reasoning` (`tool_calls` only when there are
  some). Checked against a real vLLM 0.32 on 17 request kinds (same field paths).
- Stream chunks carry what vLLM sets (`exclude_unset`): a chat stream opens with one
  `{"role": "assistant", "content": ""}` chunk per choice; `stop_reason` rides on a choice's
  last chunk, and so does `system_fingerprint` (on the usage chunk instead, if any); a
  tool call streams as `tool_calls` deltas, the first with id, type and name, the rest with
  argument text only.
- Completion logprobs: `tokens`, `token_logprobs`, `top_logprobs` (a dict of the first
  k + 1 entries of vLLM's logprob dict: the sampled token, then ranks 1..k) and `text_offset`
  (character offsets, continued across chunks). Chat logprobs: `content[{token, logprob,
  bytes, top_logprobs[first k entries]}]`, bytes being the token's UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_canary.server.engines.base import Delta, GenerationRequest, TokenLogprob

MESSAGE_NULLS = {"refusal": None, "annotations": None, "audio": None, "function_call": None}


@dataclass
class ChoiceState:
    """What one choice has said so far (for the whole answer and the request log)."""

    text: str = ""
    finish: str | None = None
    stop_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_id: str | None = None
    tool_name: str | None = None
    arguments: str = ""
    offset: int = 0  # the next text_offset of a streamed completion's logprobs

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        if delta.tool_call is not None:
            self.tool_id = delta.tool_call.id or self.tool_id
            self.tool_name = delta.tool_call.name or self.tool_name
            self.arguments += delta.tool_call.arguments
        if delta.finish_reason is not None:
            self.finish, self.stop_reason = delta.finish_reason, delta.stop_reason

    def tool_calls(self) -> list[dict[str, Any]]:
        if self.tool_name is None:
            return []
        return [{"id": self.tool_id, "type": "function",
                 "function": {"name": self.tool_name, "arguments": self.arguments}}]


def completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], k: int,
                        offset: int = 0) -> tuple[dict[str, Any], int]:
    """vLLM's CompletionLogProbs for these tokens, text offsets starting at `offset`; and the
    offset after them."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
        tokens.append(entry.token)
        values.append(entry.logprob)
        tops.append(None if entry.logprob is None else dict(entry.top[: k + 1]))
    return ({"text_offset": offsets, "token_logprobs": values, "tokens": tokens,
             "top_logprobs": tops}, offset)


def chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...],
                  k: int) -> dict[str, Any]:
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**one(e.token, e.logprob if e.logprob is not None else -9999.0),
                         "top_logprobs": [one(t, v) for t, v in e.top[:k]]}
                        for e in entries]}


def whole_choice(gen: GenerationRequest, index: int, state: ChoiceState) -> dict[str, Any]:
    """One choice of a non-streamed answer."""
    k = gen.logprobs
    finish = state.finish or "stop"
    if gen.kind == "completion":
        logprobs = None if k is None else completion_logprobs(state.logprobs, k)[0]
        return {"index": index, "text": state.text, "logprobs": logprobs,
                "finish_reason": finish, "stop_reason": state.stop_reason, "token_ids": None,
                "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}
    calls = state.tool_calls()
    # vLLM: a forced call (named or "required") has content "", an auto call None.
    content: str | None = state.text
    if calls and gen.tool_choice == "auto":
        content = None
    message: dict[str, Any] = {"role": "assistant", "content": content, **MESSAGE_NULLS,
                               "reasoning": None}
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message,
            "logprobs": None if k is None else chat_logprobs(state.logprobs, k),
            "finish_reason": finish, "stop_reason": state.stop_reason, "token_ids": None,
            "routed_experts": None}


def whole_extras(kind: str, fingerprint: str) -> dict[str, Any]:
    """vLLM's top-level fields of a whole answer beyond OpenAI's."""
    extras: dict[str, Any] = {"service_tier": None, "system_fingerprint": fingerprint}
    if kind == "chat":
        extras.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
    extras.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
    return extras


def role_chunk(index: int) -> dict[str, Any]:
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}


def stream_choice(gen: GenerationRequest, delta: Delta, state: ChoiceState) -> dict[str, Any]:
    """One choice of a stream chunk for `delta` (`state` already holds the delta's text)."""
    k = gen.logprobs
    last = delta.finish_reason is not None
    if gen.kind == "completion":
        logprobs = None
        if k is not None:
            logprobs, state.offset = completion_logprobs(delta.logprobs, k, state.offset)
        choice = {"index": delta.index, "text": delta.text, "logprobs": logprobs,
                  "finish_reason": delta.finish_reason, "stop_reason": delta.stop_reason,
                  "prompt_token_ids": None, "token_ids": None}
        return choice
    if delta.tool_call is not None:
        call: dict[str, Any] = {"index": delta.tool_call.index,
                                "function": {"arguments": delta.tool_call.arguments}}
        if delta.tool_call.name is not None:
            call = {"id": delta.tool_call.id, "type": "function", **call,
                    "function": {"name": delta.tool_call.name,
                                 "arguments": delta.tool_call.arguments}}
        body: dict[str, Any] = {"tool_calls": [call]}
    else:
        body = {"content": delta.text}
    choice = {"index": delta.index, "delta": body,
              "logprobs": None if k is None else chat_logprobs(delta.logprobs, k),
              "finish_reason": delta.finish_reason}
    if last:
        choice["stop_reason"] = delta.stop_reason
    choice["token_ids"] = None
    return choice
