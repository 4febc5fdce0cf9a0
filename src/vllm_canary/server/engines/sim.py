"""The built-in simulated engine: no GPU, no model files, realistic behaviour.

Text is deterministic per (version, prompt, seed, temperature, choice); v1 and v2 draw from
different vocabularies so their answers differ. Latency follows a simple serving model:
time to first token grows with prompt length (prefill), each output token costs a decode
step, and both slow down as more requests run at once. `error_rate` and `latency_factor` make
a bad canary on purpose.

It answers the request shapes vLLM answers (see server/api.py for what it refuses):
prompt lists and token-id prompts (choice index = prompt index * n + choice, as vLLM's
serving_completion.py numbers them), `echo`, `n`, logprobs (simplan.py), stop strings
with vLLM's hold-back (simplan.stop_pieces), JSON response formats (simjson.py), and tool
calls. Which tool is called: the one `tool_choice` names; with "required", the tool whose
name shares the most words with the last user message ("get_weather" for "weather in
Paris?"), the first on a tie. With "auto" (vLLM's default when `tools` are given) the
simulator calls a tool the same way when the last message is a user's, and answers in text
when it is a tool result, so an agent loop ends after one call. finish_reason is
"tool_calls" for auto and required, "stop" for a named function, as vLLM
(chat_completion/serving.py) and OpenAI do.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm_canary.server.engines import simplan
from vllm_canary.server.engines.base import (
    Delta,
    EngineError,
    Event,
    GenerationRequest,
    TokenLogprob,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from vllm_canary.server.engines.simjson import SchemaError, schema_value

_COMMON = (
    "the model answer is clear and the data shows that we can serve users with care while "
    "each request gets a short reply about time value system quality number result people "
    "question example reason way work change point case part fact group problem service"
).split(" ")
_V1 = "good simple stable known useful direct plain steady proven basic".split(" ")
_V2 = "better precise detailed novel thoughtful concise improved nuanced fresh accurate".split(" ")


count_tokens = simplan.count_tokens


@dataclass(frozen=True)
class SimProfile:
    """Latency and failure knobs (seconds)."""

    ttft_s: float = 0.04
    prefill_s_per_token: float = 0.0005
    tpot_s: float = 0.015
    latency_factor: float = 1.0
    error_rate: float = 0.0
    max_model_len: int = 4096
    max_batch: int = 32  # concurrency at which the simulated GPU is saturated
    jitter: float = 0.1  # log-normal sigma of per-request latency noise


class SimEngine:
    """Simulated OpenAI backend; see the module docstring."""

    name = "sim"

    def __init__(self, version: str, model_name: str, profile: SimProfile | None = None,
                 seed: int | None = None) -> None:
        self.version = version
        self.model_name = model_name
        self.profile = profile or SimProfile()
        self.max_model_len = self.profile.max_model_len
        self.running = 0
        self._rng = random.Random(seed)  # latency noise and injected failures only
        vocab = _COMMON + (_V2 * 3 if version.endswith("2") else _V1 * 3)
        self._vocab = vocab
        self.vocabulary = simplan.Vocabulary(vocab)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    def model_names(self) -> list[str]:
        return [self.model_name]

    def utilization(self) -> float:
        """Simulated accelerator utilization in 0..1 given the running requests."""
        busy = min(1.0, self.running / self.profile.max_batch)
        noise = self._rng.uniform(-0.03, 0.03)
        return min(1.0, max(0.0, 0.05 + 0.95 * busy + noise))

    def text_tokens(self, prompt: str, request: GenerationRequest, index: int,
                    length: int | None = None) -> tuple[list[str], int]:
        """One choice's deterministic answer to `prompt`, cut at `length` tokens, and its
        natural length (longer than `length` means the choice finishes with "length")."""
        key = f"{self.version}|{prompt}|{request.seed}|{request.temperature}|{index}"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        natural = rng.randint(12, 96)
        if request.ignore_eos and length is not None:
            natural = length
        count = natural if length is None else min(natural, length)
        words = rng.choices(self._vocab, cum_weights=self._cum_weights(request.temperature,
                                                                       request.top_p), k=count)
        tokens: list[str] = []
        until_period = rng.randint(6, 14)
        for i, word in enumerate(words):
            start = i == 0 or tokens[-1].endswith(".")
            until_period -= 1
            end = until_period == 0 or i == natural - 1
            if end:
                until_period = rng.randint(6, 14)
            text = word.capitalize() if start else word
            tokens.append((" " if i else "") + text + ("." if end else ""))
        return tokens, natural

    @functools.lru_cache(maxsize=16)  # noqa: B019 - a handful of settings per engine
    def _cum_weights(self, temperature: float, top_p: float = 1.0) -> list[float]:
        """Zipf-like word weights; a higher temperature flattens them, as sampling would, and
        top_p < 1 keeps only the most likely words that make up that share (nucleus)."""
        sharpness = min(1.0 / max(temperature, 0.05), 4.0)
        weights = [(1.0 / (rank + 1)) ** sharpness for rank in range(len(self._vocab))]
        if top_p < 1.0:
            total, kept, cutoff = sum(weights), 0.0, 0.0
            for w in sorted(weights, reverse=True):
                kept += w
                cutoff = w
                if kept >= top_p * total:
                    break
            weights = [w if w >= cutoff else 0.0 for w in weights]
        return list(itertools.accumulate(weights))

    def plan(self, request: GenerationRequest) -> tuple[list[ChoicePlan], int]:
        """Every choice's full answer, and the prompt token count (each prompt once)."""
        plans, prompt_count = [], 0
        for p_index, prompt in enumerate(request.prompt_list()):
            tokens = simplan.prompt_tokens(prompt, self.vocabulary)
            text = prompt if isinstance(prompt, str) else "".join(tokens)
            count = simplan.count_tokens(text) if isinstance(prompt, str) else len(tokens)
            prompt_count += count
            self._check_context(count, request.max_tokens)
            length = request.max_tokens if request.max_tokens is not None else (
                self.max_model_len - count)
            for j in range(request.n):
                plan = self._choice(request, text, j, length)
                plan.index = p_index * request.n + j
                if request.echo:
                    plan.echo = text
                    if request.logprobs is not None:
                        plan.echo_logprobs = simplan.prompt_logprobs(
                            tokens, request.logprobs, self.vocabulary, f"{self.version}|{text}")
                plans.append(plan)
        return plans, prompt_count

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> None:
        wanted = prompt_tokens + (max_tokens or 1)
        if wanted > self.max_model_len:
            raise EngineError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {wanted} tokens ({prompt_tokens} in the prompt, "
                f"{max_tokens or 1} in the completion). Please reduce the length of the prompt "
                "or max_tokens.",
                type_="invalid_request_error", param="max_tokens",
                code="context_length_exceeded",
            )

    def _choice(self, request: GenerationRequest, prompt: str, j: int,
                length: int) -> ChoicePlan:
        if length == 0:  # echo with max_tokens 0: the prompt only (vLLM still counts 1 token)
            return ChoicePlan(pieces=[""], finish="length", counted=1)
        tool = pick_tool(request)
        forced = tool is not None or request.json_schema is not None
        if forced:
            tokens, natural = self._json_tokens(request, tool, prompt, j)
            tokens = tokens[:length]
        else:
            tokens, natural = self.text_tokens(prompt, request, j, length)
        pieces, stop = simplan.stop_pieces(tokens, request.stop, request.include_stop_str)
        finish = "stop" if stop is not None or len(tokens) >= natural else "length"
        plan = ChoicePlan(pieces=pieces, finish=finish, stop_reason=stop, counted=len(pieces))
        if tool is not None:
            plan.tool = tool
            plan.tool_id = "chatcmpl-tool-" + hashlib.sha256(
                f"{request.request_id}|{j}".encode()).hexdigest()[:32]
            if finish == "stop" and request.tool_choice != "function":
                plan.finish = "tool_calls"
        if request.logprobs is not None:
            key = f"{self.version}|{prompt}|{j}"
            plan.logprobs = [simplan.token_logprob(t, request.logprobs, self.vocabulary,
                                                   key=f"{key}|{i}", forced=forced)
                             for i, t in enumerate(tokens[: len(pieces)])]
        return plan

    def _json_tokens(self, request: GenerationRequest, tool: ToolSpec | None, prompt: str,
                     j: int) -> tuple[list[str], int]:
        """A tool call's arguments or a JSON answer, as tokens, and their count."""
        key = f"{self.version}|{prompt}|{request.seed}|{j}|json"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        schema = tool.parameters if tool is not None else request.json_schema or {}
        try:
            value = schema_value(schema, rng, self._vocab)
        except SchemaError as exc:
            raise EngineError(400, str(exc), "invalid_request_error",
                              param="tools" if tool else "response_format") from None
        if tool is None and value == {} and not schema.get("properties"):  # json_object
            value = {"answer": " ".join(rng.choices(self._vocab, k=6))}
        tokens = simplan.split_tokens(json.dumps(value, ensure_ascii=False))
        return tokens, len(tokens)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        p = self.profile
        if any(len(prompt) > simplan.LONG_TEXT for prompt in request.prompt_list()):
            # a long prompt's tokenizing (~1 s for 4 MB) runs off the event loop
            plans, prompt_tokens = await asyncio.to_thread(self.plan, request)
        else:
            plans, prompt_tokens = self.plan(request)
        if p.error_rate and self._rng.random() < p.error_rate:
            raise EngineError(500, f"simulated engine failure (error rate {p.error_rate:g})")
        noise = self._rng.lognormvariate(0.0, p.jitter) if p.jitter else 1.0
        self.running += 1
        try:
            contention = 1.0 + 0.05 * (self.running - 1)
            ttft = (p.ttft_s + p.prefill_s_per_token * prompt_tokens) * contention
            await asyncio.sleep(ttft * p.latency_factor * noise)
            for step in range(max(len(plan.pieces) for plan in plans)):
                if step:
                    decode = p.tpot_s * (1.0 + 0.02 * (self.running - 1))
                    await asyncio.sleep(decode * p.latency_factor * noise)
                for plan in plans:
                    if step < len(plan.pieces):
                        yield plan.delta(step)
            yield Usage(prompt_tokens, sum(plan.counted for plan in plans))
        finally:
            self.running -= 1


@dataclass
class ChoicePlan:
    """One choice's answer, token by token: `pieces[i]` is the text token i adds to a stream
    (empty while held back for a stop string), `logprobs[i]` its logprob entry."""

    pieces: list[str]
    finish: str
    stop_reason: str | None = None
    counted: int = 0  # completion tokens (the token that completed a stop string included)
    index: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    echo: str = ""
    echo_logprobs: list[TokenLogprob] = field(default_factory=list)
    tool: ToolSpec | None = None
    tool_id: str = ""

    def delta(self, step: int) -> Delta:
        last = step == len(self.pieces) - 1
        logprobs = self.logprobs[step: step + 1]
        text = self.pieces[step]
        if step == 0 and self.echo:
            text, logprobs = self.echo + text, self.echo_logprobs + logprobs
        call = None
        if self.tool is not None:
            call = ToolCallDelta(text, self.tool_id if step == 0 else None,
                                 self.tool.name if step == 0 else None)
            text = ""
        return Delta(self.index, text, self.finish if last else None, tuple(logprobs),
                     self.stop_reason if last else None, call)


def pick_tool(request: GenerationRequest) -> ToolSpec | None:
    """The tool this answer calls, or None for a text answer (rules: module docstring)."""
    if not request.tools or request.tool_choice == "none":
        return None
    if request.tool_choice == "function":
        return next(t for t in request.tools if t.name == request.tool_name)
    last = (request.messages or [{}])[-1]
    if request.tool_choice == "auto" and last.get("role") != "user":
        return None
    content = last.get("content") or ""
    if isinstance(content, list):  # text parts
        content = " ".join(str(part.get("text", "")) for part in content)
    said = set(re.findall(r"[a-z0-9]+", str(content).lower()))
    scores = [len(said.intersection(re.findall(r"[a-z0-9]+", t.name.lower())))
              for t in request.tools]
    return request.tools[scores.index(max(scores))]  # the first of the best
