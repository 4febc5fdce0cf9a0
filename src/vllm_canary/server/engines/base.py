"""The engine protocol: what the OpenAI front (server/app.py) needs from a backend, and the
error type every front renders as an OpenAI error body.

An engine (today the simulator; `vllm` and `upstream` are byte relays, server/relay.py)
turns one validated request into deltas (text, logprobs, tool-call pieces) and a usage
count. The front does validation, vLLM's wire shapes, metrics and the request log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["completion", "chat"]
# A completion prompt: text, or token ids (OpenAI's "array of tokens").
Prompt = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the client offers (`tools[].function`): its name and JSON-Schema
    `parameters` (an empty object schema when the client gave none)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request. `prompt` is the completion prompt, or the chat messages rendered
    as text (used by the simulator and for token accounting); `messages` is set for chat."""

    kind: Kind
    model: str
    prompt: str
    max_tokens: int | None  # None: what the context leaves (vLLM's chat default)
    messages: list[dict[str, Any]] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    request_id: str = ""
    # The request shapes the simulator answers (vLLM's semantics; see server/api.py).
    prompts: tuple[Prompt, ...] = ()  # completions: one entry per prompt; () = (prompt,)
    echo: bool = False
    logprobs: int | None = None  # top-k alternatives per token; None = no logprobs
    include_stop_str: bool = False
    ignore_eos: bool = False
    json_schema: dict[str, Any] | None = None  # response_format json_object/json_schema
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "none"  # "none" | "auto" | "required" | "function" (tool_name)
    tool_name: str | None = None

    def prompt_list(self) -> tuple[Prompt, ...]:
        return self.prompts or (self.prompt,)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log-probability as vLLM's engine reports it: `top` is its logprob dict in
    order, the sampled token first, then the top-k by rank, duplicates dropped
    (vllm/logprobs.py append_logprobs_for_next_position). `logprob` is None (and `top`
    empty) for the first prompt token of an echo, which has no context."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call: `id` and `name` on its first piece only."""

    arguments: str
    id: str | None = None
    name: str | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class Delta:
    """New text for choice `index`; `finish_reason` is set on that choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens this delta reports (sim only)
    stop_reason: str | None = None  # the stop string that ended the choice (vLLM's field)
    tool_call: ToolCallDelta | None = None  # set instead of text for a tool call


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, yielded once after the last delta."""

    prompt_tokens: int
    completion_tokens: int


Event = Delta | Usage


class EngineError(Exception):
    """A failure to report to the client as an OpenAI-style error with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "server_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@runtime_checkable
class Engine(Protocol):
    """A model backend. `generate` must stop promptly when its iterator is closed
    (the client went away): that is how a disconnect cancels the generation."""

    name: str

    async def start(self) -> None:
        """Acquire resources; may return before the engine is ready (see `ready`)."""

    async def close(self) -> None:
        """Release resources; called once on shutdown after in-flight requests drained."""

    def ready(self) -> bool:
        """True when requests can be served (drives GET /health)."""

    def model_names(self) -> list[str]:
        """Served model names (the `model` field clients may send)."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Deltas for all choices, then one Usage. Raises EngineError before the first
        delta for failures the client should see as an HTTP error."""
        ...
