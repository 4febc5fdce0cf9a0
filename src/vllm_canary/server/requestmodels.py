"""The OpenAI request bodies the simulator reads, as pydantic models: server/api.py validates
with them and turns a validation error into a 400 naming the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vllm_canary.server.engines.base import Prompt

# The request models follow vLLM 0.32's CompletionRequest / ChatCompletionRequest
# (vllm/entrypoints/openai/{completion,chat_completion}/protocol.py) for what the simulator
# answers. Every optional field accepts null and null means its default, as OpenAI's schema
# marks them nullable (openai-openapi openapi.yaml: CreateCompletionRequest and
# CreateChatCompletionRequest, `nullable: true` on temperature, top_p, n, stream,
# max_tokens, logprobs, echo, stop, seed, ...).
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_CHOICES = 64  # prompts x n: bounds one request's work in the simulator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = Field(default=False, strict=True)
    continuous_usage_stats: bool | None = Field(default=None, strict=True)  # refused if true


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ...
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for i, part in enumerate(value if isinstance(value, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                raise ValueError(f"content part {i} must be an object with a 'type', e.g. "
                                 '{"type": "text", "text": "..."}')
            if kind != "text":
                raise ValueError(
                    f"the sim engine reads only text content parts, not '{kind}'; send text, "
                    "or serve a real multimodal model (--engine vllm)")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i} (type 'text') needs a string 'text'")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: NamedFunction


class SamplingBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by _refuse_unimplemented

    model: str | None = None
    max_tokens: int | None = Field(default=None, strict=True, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, strict=True, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, strict=True)
    stream: bool | None = Field(default=None, strict=True)
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    include_stop_str_in_output: bool | None = Field(default=None, strict=True)
    ignore_eos: bool | None = Field(default=None, strict=True)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("stop cannot contain an empty string.")  # vLLM's SamplingParams
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = Field(default=None, strict=True)
    logprobs: int | None = Field(default=None, strict=True, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        if value == "" or value == []:
            raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        if isinstance(value, list):
            if all(isinstance(v, str) for v in value):
                if any(v == "" for v in value):
                    raise ValueError("each prompt in the list must be non-empty")
            elif all(_is_ids(v) for v in value):
                pass
            elif not _is_ids(value):
                raise ValueError("prompt must be a string, a list of strings, a list of token "
                                 "ids (integers >= 0) or a list of such lists")
        return value

    def prompts(self) -> tuple[Prompt, ...]:
        p = self.prompt
        if isinstance(p, str):
            return (p,)
        if p and isinstance(p[0], int):
            return (tuple(p),)  # type: ignore[arg-type]
        return tuple(x if isinstance(x, str) else tuple(x) for x in p)  # type: ignore[misc]


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, strict=True, ge=1)
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, strict=True, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # the simulator makes one call either way


def _is_ids(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(type(v) is int and v >= 0 for v in value))
