"""Observation on the side: what the relay learns from the bytes it passes, without changing
them or the request.

`Observation` reads one generation answer (`/v1/completions`, `/v1/chat/completions`,
`/v1/responses`), streamed (SSE bytes fed as they pass, split anywhere: mid-event, mid-line,
mid-UTF-8) or whole (one JSON body). It collects what the metrics and the request log need:
time to first token, the gaps between tokens, each choice's text, tool-call arguments and
finish reason, and the token usage.

Token counts: the answer's `usage` when it carries one (vLLM: always on a whole answer, on a
stream only with `stream_options.include_usage`). Otherwise the output is counted by its
deltas: vLLM sends one token per delta by default, so for vLLM this is exact; for other
upstreams (which may batch tokens) it is an estimate. The prompt is not counted without
`usage` (it would take a tokenizer), and the request is never altered to get counts.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

# The generation routes observed in detail, and their kind.
GENERATION = {"/v1/completions": "completion", "/v1/chat/completions": "chat",
              "/v1/responses": "responses"}

# vLLM 0.32's routes (vllm/entrypoints/**/api_router.py, `@router.get|post`): the values of
# the `endpoint` label. Any other path counts as "other", so the label stays bounded.
VLLM_ROUTES = frozenset("""
/health /load /ping /version /metrics /server_info /tokenizer_info /is_sleeping /is_paused
/v1/models /v1/completions /v1/chat/completions /v1/responses /v1/embeddings /v1/messages
/v1/messages/count_tokens /v1/audio/transcriptions /v1/audio/translations /v1/score
/v1/rerank /v2/rerank /v2/embed /rerank /score /classify /pooling /tokenize /detokenize
/invocations /v1/load_lora_adapter /v1/unload_lora_adapter /v1/chat/completions/render
/v1/completions/render /v1/responses/render /inference/v1/generate /abort_requests
/reset_prefix_cache /reset_mm_cache /sleep /wake_up /pause /resume /start_profile
/stop_profile /collective_rpc /scale_elastic_ep /is_scaling_elastic_ep
""".split())
RESPONSE_BY_ID = "/v1/responses/{response_id}"


def endpoint_label(path: str) -> str:
    """The bounded `endpoint` label of a request path: a vLLM route, or "other"."""
    if path in VLLM_ROUTES:
        return path
    if path.startswith("/v1/responses/"):
        rest = path[len("/v1/responses/"):]
        if "/" not in rest:
            return RESPONSE_BY_ID
        if rest.count("/") == 1 and rest.endswith("/cancel"):
            return RESPONSE_BY_ID + "/cancel"
    return "other"


class SSEDecoder:
    """Incremental Server-Sent Events decoder: feed it bytes as they arrive, get each event's
    `data` payload.

    Only `data:` fields matter for the OpenAI streaming format; comments and other fields
    (`event:`, `id:`, `retry:`) are skipped, and multi-line data is joined with newlines as the
    SSE spec says. Payloads stay bytes until a whole line is there, so a read that splits a
    UTF-8 character is harmless (a newline byte never occurs inside one).
    """

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume raw bytes (any split); return the data of every event they completed."""
        if not self._tail and not self._data and chunk.startswith(b"data: ") and \
                chunk.endswith(b"\n\n") and chunk.count(b"\n") == 2 and b"\r" not in chunk:
            return [chunk[6:-2]]  # one whole event, as servers write them: the fast path
        lines = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
        self._tail = lines.pop()
        out = []
        for line in lines:
            data = self.feed_line(line)
            if data is not None:
                out.append(data)
        return out

    def feed_line(self, line: bytes) -> bytes | None:
        """Consume one line (with or without its line ending); return a completed event's
        data."""
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._data:
                return None
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            self._data = []
            return data
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        return None

    def flush(self) -> bytes | None:
        """The last event's data when a stream ended without its closing blank line."""
        if self._tail:
            self.feed_line(self._tail)
            self._tail = b""
        return self.feed_line(b"")


class Observation:
    """One generation answer as it passes. Times are `time.perf_counter()` seconds.

    Attributes after the answer: `texts` and `finish` (choice index → text / finish reason),
    `tool_calls` ((choice, tool index) → {"name", "arguments": [pieces]}; `tool_call_list()`
    joins them), `usage` (the answer's own
    usage object, or None), `deltas` (token-bearing deltas seen), `first_token_at`, `error`
    (an error the upstream reported in the stream, with `error_status`), `done` (the stream's
    own end went by: a client may hang up then without having cut the answer short).
    """

    __slots__ = ("_decoder", "_pieces", "deltas", "done", "error", "error_status", "finish",
                 "first_token_at", "kind", "last_token_at", "on_gap", "response_id", "started",
                 "streamed", "tool_calls", "usage")

    def __init__(self, kind: str, started: float | None = None,
                 on_gap: Any = None) -> None:
        self.kind = kind
        self.started = time.perf_counter() if started is None else started
        self.on_gap = on_gap  # called with each inter-token gap in seconds (a Histogram's observe)
        self._decoder = SSEDecoder()
        self._pieces: dict[int, list[str]] = {}  # joined once, not per delta (quadratic)
        self.finish: dict[int, str | None] = {}
        self.tool_calls: dict[tuple[int, int], dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.deltas = 0
        self.first_token_at: float | None = None
        self.last_token_at: dict[int, float] = {}
        self.error: str | None = None
        self.error_status: int | None = None
        self.streamed = False
        self.done = False  # the stream's own end passed ([DONE], or the Responses API's last)
        self.response_id: str | None = None  # the answer's own `id`

    # -- a stream ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes of an SSE answer, as they pass (any split)."""
        self.streamed = True
        for payload in self._decoder.feed(data):
            self._event(payload)

    def end(self) -> None:
        """The stream ended: take an event that lacked its closing blank line."""
        payload = self._decoder.flush()
        if payload is not None:
            self._event(payload)

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # not ours to judge: the client gets the bytes as they are
        if not isinstance(event, dict):
            return
        if self.response_id is None:
            self.response_id = event.get("id")
        if self.kind == "responses":
            self._responses_event(event)
            return
        if "error" in event or event.get("object") == "error":
            self._error(event.get("error", event))
            return
        chat = self.kind == "chat"
        for choice in event.get("choices") or ():
            index = choice.get("index", 0)
            if chat:
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                token = bool(text) or bool(delta.get("reasoning") or
                                           delta.get("reasoning_content"))
                for call in delta.get("tool_calls") or ():
                    token |= self._tool_delta(index, call)
            else:
                text = choice.get("text") or ""
                token = bool(text)
            if text:
                pieces = self._pieces.get(index)
                if pieces is None:
                    self._pieces[index] = [text]
                else:
                    pieces.append(text)
            if token:
                self._token(index)
            finish = choice.get("finish_reason")
            if finish is not None:
                self.finish[index] = finish
        usage = event.get("usage")
        if usage:
            self.usage = usage

    def _tool_delta(self, index: int, call: dict[str, Any]) -> bool:
        key = (index, call.get("index", 0))
        entry = self.tool_calls.setdefault(key, {"name": "", "arguments": []})
        function = call.get("function") or {}
        if function.get("name"):
            entry["name"] = function["name"]
        arguments = function.get("arguments")
        if arguments:
            entry["arguments"].append(arguments)
            return True
        return bool(function.get("name"))

    def _responses_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind == "response.output_text.delta":
            self._pieces.setdefault(0, []).append(event.get("delta") or "")
            self._token(0)
        elif kind == "response.function_call_arguments.delta":
            key = (0, event.get("output_index", 0))
            entry = self.tool_calls.setdefault(key, {"name": "", "arguments": []})
            entry["arguments"].append(event.get("delta") or "")
            self._token(0)
        elif kind in ("response.reasoning_text.delta", "response.reasoning.delta"):
            self._token(0)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._responses_final(event.get("response") or {}, streamed=True)
            self.done = True
        elif kind == "error":
            self._error(event)

    def _token(self, index: int) -> None:
        now = time.perf_counter()
        self.deltas += 1
        if self.first_token_at is None:
            self.first_token_at = now
        previous = self.last_token_at.get(index)
        if previous is not None and self.on_gap is not None:
            self.on_gap(now - previous)
        self.last_token_at[index] = now

    def _error(self, err: Any) -> None:
        if isinstance(err, dict):
            self.error = str(err.get("message") or err)
            code = err.get("code")
            if isinstance(code, int) and 400 <= code < 600:
                self.error_status = code
        else:
            self.error = str(err)
        if self.error_status is None:
            self.error_status = 500

    # -- a whole answer ------------------------------------------------------------------------
    def body(self, raw: bytes) -> dict[str, Any] | None:
        """A whole JSON answer; returns it parsed (None when it is not a JSON object)."""
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(answer, dict):
            return None
        self.response_id = answer.get("id")
        if self.kind == "responses":
            self._responses_final(answer, streamed=False)
            return answer
        chat = self.kind == "chat"
        for choice in answer.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if chat:
                message = choice.get("message") or {}
                text = message.get("content") or ""
                for n, call in enumerate(message.get("tool_calls") or ()):
                    function = call.get("function") or {}
                    self.tool_calls[(index, n)] = {"name": function.get("name") or "",
                                                   "arguments": [function.get("arguments") or ""]}
            else:
                text = choice.get("text") or ""
            self._pieces[index] = [text]
            self.finish[index] = choice.get("finish_reason")
        usage = answer.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        return answer

    def _responses_final(self, response: dict[str, Any], streamed: bool) -> None:
        self.response_id = response.get("id") or self.response_id
        usage = response.get("usage")
        if isinstance(usage, dict):  # the Responses API names them input/output tokens
            self.usage = {"prompt_tokens": usage.get("input_tokens"),
                          "completion_tokens": usage.get("output_tokens"),
                          "total_tokens": usage.get("total_tokens")}
        status = response.get("status")
        details = response.get("incomplete_details") or {}
        self.finish[0] = details.get("reason") if status == "incomplete" else status
        if streamed:
            return
        texts: list[str] = []
        for n, item in enumerate(response.get("output") or ()):
            if item.get("type") == "message":
                texts += [part.get("text") or "" for part in item.get("content") or ()
                          if part.get("type") == "output_text"]
            elif item.get("type") == "function_call":
                self.tool_calls[(0, n)] = {"name": item.get("name") or "",
                                           "arguments": [item.get("arguments") or ""]}
        self._pieces[0] = texts

    # -- what the metrics and the log read -----------------------------------------------------
    @property
    def texts(self) -> dict[int, str]:
        """Each choice's text so far (choice index → text)."""
        return {i: "".join(p) for i, p in sorted(self._pieces.items())}

    def prompt_tokens(self) -> int | None:
        value = (self.usage or {}).get("prompt_tokens")
        return value if isinstance(value, int) else None

    def completion_tokens(self) -> int | None:
        """From `usage`, else the number of token-bearing deltas (None for a whole answer
        without usage)."""
        value = (self.usage or {}).get("completion_tokens")
        if isinstance(value, int):
            return value
        return self.deltas if self.streamed else None

    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def finish_reasons(self) -> list[str | None]:
        return [self.finish[i] for i in sorted(self.finish)]

    def tool_call_list(self) -> list[dict[str, Any]]:
        return [{"choice": c, "name": v["name"], "arguments": "".join(v["arguments"])}
                for (c, _), v in sorted(self.tool_calls.items())]
