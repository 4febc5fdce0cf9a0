"""The built-in simulated engine: no GPU, no model files, realistic behaviour.

Text is deterministic per (version, prompt, seed, temperature, choice); v1 and v2 draw from
different vocabularies so their answers differ. Latency follows a simple serving model:
time to first token grows with prompt length (prefill), each output token costs a decode
step, and both slow down as more requests run at once. `error_rate` and `latency_factor` make
a bad canary on purpose.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vllm_canary.server.engines.base import Delta, EngineError, Event, GenerationRequest, Usage

_WORDS = re.compile(r"\w+|[^\w\s]")

_COMMON = (
    "the model answer is clear and the data shows that we can serve users with care while "
    "each request gets a short reply about time value system quality number result people "
    "question example reason way work change point case part fact group problem service"
).split(" ")
_V1 = "good simple stable known useful direct plain steady proven basic".split(" ")
_V2 = "better precise detailed novel thoughtful concise improved nuanced fresh accurate".split(" ")


def count_tokens(text: str) -> int:
    """A word-level token count: close enough to BPE for latency and context checks."""
    return len(_WORDS.findall(text))


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

    def text_tokens(self, request: GenerationRequest, index: int) -> tuple[list[str], int]:
        """One choice's deterministic answer, cut at max_tokens, and its natural length
        (longer than max_tokens means the choice finishes with "length")."""
        key = f"{self.version}|{request.prompt}|{request.seed}|{request.temperature}|{index}"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        natural = rng.randint(12, 96)
        count = min(natural, request.max_tokens)
        words = rng.choices(self._vocab, cum_weights=self._cum_weights(request.temperature),
                            k=count)
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

    @functools.lru_cache(maxsize=16)  # noqa: B019 - a handful of temperatures per engine
    def _cum_weights(self, temperature: float) -> list[float]:
        """Zipf-like word weights; a higher temperature flattens them, as sampling would."""
        sharpness = min(1.0 / max(temperature, 0.05), 4.0)
        weights = [(1.0 / (rank + 1)) ** sharpness for rank in range(len(self._vocab))]
        return list(itertools.accumulate(weights))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        prompt_tokens = count_tokens(request.prompt)
        if prompt_tokens + request.max_tokens > self.max_model_len:
            raise EngineError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + request.max_tokens} tokens ({prompt_tokens} in "
                f"the prompt, {request.max_tokens} in the completion). Please reduce the length "
                "of the prompt or max_tokens.",
                type_="invalid_request_error", param="max_tokens",
                code="context_length_exceeded",
            )
        p = self.profile
        if p.error_rate and self._rng.random() < p.error_rate:
            raise EngineError(500, f"simulated engine failure (error rate {p.error_rate:g})")
        answers = [self.text_tokens(request, i) for i in range(request.n)]
        choices = [tokens for tokens, _ in answers]
        noise = self._rng.lognormvariate(0.0, p.jitter) if p.jitter else 1.0
        self.running += 1
        try:
            contention = 1.0 + 0.05 * (self.running - 1)
            ttft = (p.ttft_s + p.prefill_s_per_token * prompt_tokens) * contention
            await asyncio.sleep(ttft * p.latency_factor * noise)
            texts = [""] * request.n
            done = [False] * request.n
            produced = 0
            for step in range(max(len(c) for c in choices)):
                if step:
                    decode = p.tpot_s * (1.0 + 0.02 * (self.running - 1))
                    await asyncio.sleep(decode * p.latency_factor * noise)
                for i, tokens in enumerate(choices):
                    if done[i] or step >= len(tokens):
                        continue
                    delta, finish = tokens[step], None
                    stop_at = _first_stop(texts[i] + delta, request.stop)
                    if stop_at is not None:
                        delta, finish = (texts[i] + delta)[:stop_at][len(texts[i]):], "stop"
                    elif step == len(tokens) - 1:
                        finish = "length" if len(tokens) < answers[i][1] else "stop"
                    texts[i] += delta
                    produced += 1
                    done[i] = finish is not None
                    yield Delta(i, delta, finish)
            yield Usage(prompt_tokens, produced)
        finally:
            self.running -= 1


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [pos for s in stops if s and (pos := text.find(s)) >= 0]
    return min(hits) if hits else None
