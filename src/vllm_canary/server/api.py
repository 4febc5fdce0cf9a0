"""OpenAI request models and error bodies for the model server.

Requests are validated here once; a bad one becomes an `ApiError` that the front renders as
`{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vllm_canary.server import jsonlimits
from vllm_canary.server.engines.base import EngineError, GenerationRequest, Kind


class ApiError(EngineError):
    """An error in the client's request: an EngineError whose type defaults to
    `invalid_request_error`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message, type_, param, code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, strict=True)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _Sampling(BaseModel):
    # Unknown fields are kept and passed to upstream engines (e.g. logprobs, top_k).
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, strict=True, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, strict=True, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, strict=True)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionBody(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        return value

    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, strict=True, ge=1)


def render_chat(messages: list[Message]) -> str:
    """Chat messages as one text prompt (for the simulator and token accounting)."""
    lines = [f"{m.role}: {m.text()}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever content-type the client sent (curl -d sends
    form-urlencoded by default and the seed's commands rely on it being read as JSON).

    Decoded under server/jsonlimits.py's rules (strict UTF-8, no lone surrogates, no NaN, a
    number must fit a double, nesting at most 64 deep): any other body is a 400 ApiError
    with code `invalid_json`, never an exception of another type."""
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = jsonlimits.loads(raw)
    except jsonlimits.JsonLimitError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return data


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"'{param}' is a required property"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return ApiError(400, message, param=param)


def parse_request(
    kind: Kind,
    data: dict[str, Any],
    *,
    default_model: str,
    max_tokens_limit: int,
    request_id: str,
) -> tuple[GenerationRequest, _Sampling]:
    """Validate a decoded body into the engine's request (and the parsed body, for echoing
    stream options and logging parameters)."""
    model_cls: type[_Sampling] = CompletionBody if kind == "completion" else ChatBody
    try:
        body = model_cls.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if isinstance(body, ChatBody):
        max_tokens = body.max_completion_tokens or body.max_tokens
        prompt, messages = render_chat(body.messages), [m.model_dump() for m in body.messages]
        default_max = 256
    else:
        assert isinstance(body, CompletionBody)
        max_tokens, prompt, messages, default_max = body.max_tokens, body.prompt_text(), None, 16
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise ApiError(
            400, f"max_tokens must be at most {max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
        )
    known = set(model_cls.model_fields)
    extra = {k: v for k, v in data.items() if k not in known}
    request = GenerationRequest(
        kind=kind,
        model=body.model or default_model,
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens or default_max,
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        stop=body.stop_list(),
        seed=body.seed,
        request_id=request_id,
        extra=extra,
    )
    return request, body
