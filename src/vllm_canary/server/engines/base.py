"""The engine protocol: what the OpenAI front (server/app.py) needs from a backend.

An engine turns one normalised generation request into a stream of text deltas. The front
does the OpenAI wire format, validation, metrics and the request log, so every engine
(`sim`, `vllm`, `upstream`) is measured and logged the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["completion", "chat"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request. `prompt` is the completion prompt, or the chat messages rendered
    as text (used by the simulator and for token accounting); `messages` is set for chat."""

    kind: Kind
    model: str
    prompt: str
    max_tokens: int
    messages: list[dict[str, Any]] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    request_id: str = ""
    # Fields an upstream understands that we pass through unchanged (e.g. logprobs).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delta:
    """New text for choice `index`; `finish_reason` is set on that choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None


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
