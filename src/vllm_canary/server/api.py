"""Request validation and error bodies for the simulator's front (server/app.py).

Requests are validated here once (models: requestmodels.py); a bad one becomes an `ApiError`
that the front renders as `{"error": {"message", "type", "param", "code"}}` with a 4xx
status. A field or a value the simulator does not implement is a 400 that names it
(`unsupported_parameter`), never silently ignored; a request shape it does implement is
checked under vLLM's rules (each rule's source is named where it is applied).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from vllm_canary.server import jsonlimits
from vllm_canary.server.engines.base import EngineError, GenerationRequest, Kind, Prompt, ToolSpec
from vllm_canary.server.engines.simjson import SchemaError, check_schema
from vllm_canary.server.requestmodels import (
    MAX_CHOICES,
    ChatBody,
    CompletionBody,
    Message,
    NamedToolChoice,
    ResponseFormat,
    SamplingBody,
)

_log = logging.getLogger("vllm_canary.server")


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


# Fields the simulator does not implement, with the values that mean "off" (null always
# does). Any other value, or any field not listed here nor in the models, is a 400 that says
# so (never silently ignored).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "repetition_penalty": (1,),
    "logit_bias": ({},), "top_k": (0, -1), "min_p": (0,), "min_tokens": (0,),
    "best_of": (1,), "use_beam_search": (False,), "length_penalty": (1,),
    "stop_token_ids": ([],), "bad_words": ([],), "prompt_logprobs": (),
    "skip_special_tokens": (True,), "spaces_between_special_tokens": (True,),
    "add_special_tokens": (True, False), "add_generation_prompt": (True,),
    "continue_final_message": (False,), "echo": (False,), "suffix": (),
    "priority": (0,), "return_tokens_as_token_ids": (False,), "return_token_ids": (False,),
    "include_reasoning": (True,), "reasoning_effort": (), "truncate_prompt_tokens": (),
    "service_tier": ("auto", "default"), "structured_outputs": (), "guided_json": (),
    "logprob_token_ids": (), "modalities": (["text"],), "audio": (), "prediction": (),
    "web_search_options": (), "documents": (), "chat_template": (),
    "chat_template_kwargs": ({},), "mm_processor_kwargs": ({},), "vllm_xargs": ({},),
}
# Fields that never change an answer: any value is fine.
_METADATA = frozenset({"user", "metadata", "store", "request_id", "cache_salt",
                       "kv_transfer_params", "session_id"})


def _refuse_unimplemented(body: SamplingBody, kind: Kind) -> None:
    route = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    for name, value in (body.model_extra or {}).items():
        if value is None or name in _METADATA:
            continue
        neutral = _NEUTRAL.get(name)
        if neutral is not None and any(
                value == v and isinstance(value, bool) == isinstance(v, bool) for v in neutral):
            continue
        what = "field" if neutral is None else "setting"
        raise ApiError(
            400, f"the sim engine does not implement the {what} '{name}' (got "
            f"{_short(value)}) on {route}; remove it, or serve a real model (--engine vllm)",
            param=name, code="unsupported_parameter")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render_chat(messages: list[Message]) -> str:
    """Chat messages as one text prompt (for the simulator and token accounting)."""
    lines = [f"{m.role}: {m.text()}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever content-type the client sent (curl -d sends
    form-urlencoded by default and the seed's commands rely on it being read as JSON).

    Decoded under server/jsonlimits.py's rules (strict UTF-8, no lone surrogates, no NaN, a
    number must fit a double, nesting at most 64 deep): any other body is a 400 ApiError
    with code `invalid_json`, never an exception of another type, and one INFO log line."""
    if not raw.strip():
        problem = "request body is empty; send a JSON object"
    else:
        try:
            data = jsonlimits.loads(raw)
        except jsonlimits.JsonLimitError as exc:
            problem = f"request body is not valid JSON: {exc}"
        else:
            if isinstance(data, dict):
                return data
            problem = "request body must be a JSON object"
    _log.info("rejected a request body (%d bytes): %s", len(raw), problem)
    raise ApiError(400, problem, code="invalid_json")


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = f"'{param}' is a required property"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return ApiError(400, message, param=param)


def _json_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The schema a JSON response format asks for: json_object is any object."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None:
        raise ApiError(400, "When response_format type is 'json_schema', the 'json_schema' "
                       "field must be provided.", param="response_format")
    schema = fmt.json_schema.json_schema or {"type": "object"}
    _check(schema, "response_format.json_schema.schema", "response_format")
    return schema


def _check(schema: Any, where: str, param: str) -> None:
    try:
        check_schema(schema, where)
    except SchemaError as exc:
        raise ApiError(400, str(exc), param=param, code="unsupported_schema") from None


def _tools(body: ChatBody) -> tuple[tuple[ToolSpec, ...], str, str | None]:
    """(tools, tool_choice, named function) under vLLM's rules (ChatCompletionRequest
    check_tool_usage): no tool_choice with tools means "auto"; a tool_choice needs tools;
    a named function must be one of them."""
    if body.tools == []:
        raise ApiError(400, "`tools` must not be an empty array. Omit `tools` or provide at "
                       "least one tool.", param="tools")
    tools = body.tools or []
    choice = body.tool_choice if body.tool_choice is not None else (
        "auto" if tools else "none")
    if choice != "none" and not tools:
        raise ApiError(400, "When using `tool_choice`, `tools` must be set.",
                       param="tool_choice")
    specs = []
    for i, tool in enumerate(tools):
        params = tool.function.parameters or {"type": "object", "properties": {}}
        if choice != "none":
            _check(params, f"tools[{i}].function.parameters", "tools")
        specs.append(ToolSpec(tool.function.name, params))
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if all(t.name != name for t in specs):
            raise ApiError(400, "The tool specified in `tool_choice` does not match any of "
                           "the specified `tools`", param="tool_choice")
        return tuple(specs), "function", name
    return tuple(specs), choice, None


def parse_request(
    kind: Kind,
    data: dict[str, Any],
    *,
    default_model: str,
    max_tokens_limit: int,
    request_id: str,
) -> tuple[GenerationRequest, SamplingBody]:
    """Validate a decoded body into the simulator's request (and the parsed body, for stream
    options). A field or value the simulator does not implement is a 400 that names it."""
    model_cls: type[SamplingBody] = CompletionBody if kind == "completion" else ChatBody
    try:
        body = model_cls.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    _refuse_unimplemented(body, kind)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.",
                       param="stream_options")
    if body.stream_options is not None and body.stream_options.continuous_usage_stats:
        raise ApiError(400, "the sim engine does not implement the setting "
                       "'stream_options.continuous_usage_stats' (got True); remove it, or "
                       "serve a real model (--engine vllm)",
                       param="stream_options.continuous_usage_stats",
                       code="unsupported_parameter")
    n = body.n or 1
    shapes: dict[str, Any] = {"json_schema": _json_schema(body.response_format)}
    if isinstance(body, ChatBody):
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens == 0:
            raise ApiError(400, "max_tokens must be at least 1, got 0.", param="max_tokens")
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "when using `top_logprobs`, `logprobs` must be set to true.",
                           param="top_logprobs")
        tools, choice, name = _tools(body)
        shapes.update(tools=tools, tool_choice=choice, tool_name=name,
                      logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        prompt, messages = render_chat(body.messages), [m.model_dump() for m in body.messages]
        prompts: tuple[Prompt, ...] = ()
    else:
        assert isinstance(body, CompletionBody)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # vLLM's default
        if max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens must be at least 1, got 0.", param="max_tokens")
        prompts = body.prompts()
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, f"prompts x n is {len(prompts) * n}; the sim engine answers at "
                           f"most {MAX_CHOICES} choices per request", param="prompt")
        prompt = prompts[0] if isinstance(prompts[0], str) else ""
        if len(prompts) == 1 and isinstance(prompts[0], str):
            prompts = ()  # the plain case: GenerationRequest.prompt alone
        messages = None
        shapes.update(echo=bool(body.echo), logprobs=body.logprobs)
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise ApiError(
            400, f"max_tokens must be at most {max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
        )
    request = GenerationRequest(
        kind=kind,
        model=body.model or default_model,
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        n=n,
        stop=body.stop_list(),
        seed=body.seed,
        request_id=request_id,
        prompts=prompts,
        include_stop_str=bool(body.include_stop_str_in_output),
        ignore_eos=bool(body.ignore_eos),
        **shapes,
    )
    return request, body
