"""The simulated engine: deterministic text, version differences, limits."""

from __future__ import annotations

import pytest

from vllm_canary.server.engines.base import Delta, EngineError, GenerationRequest, Usage
from vllm_canary.server.engines.sim import SimEngine, SimProfile

FAST = SimProfile(ttft_s=0, prefill_s_per_token=0, tpot_s=0, jitter=0, max_model_len=64)


async def run(engine: SimEngine, **kw: object) -> tuple[dict[int, str], dict[int, str], Usage]:
    req = GenerationRequest(kind="completion", model="m", **{"prompt": "hello", "max_tokens": 8,
                                                             **kw})  # type: ignore[arg-type]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    async for ev in engine.generate(req):
        if isinstance(ev, Delta):
            texts[ev.index] = texts.get(ev.index, "") + ev.text
            if ev.finish_reason:
                finish[ev.index] = ev.finish_reason
        else:
            usage = ev
    assert usage is not None
    return texts, finish, usage


async def test_same_version_prompt_seed_gives_same_text() -> None:
    a = await run(SimEngine("v1", "m", FAST), seed=3)
    b = await run(SimEngine("v1", "m", FAST), seed=3)
    c = await run(SimEngine("v1", "m", FAST), seed=4)
    assert a[0] == b[0]
    assert a[0] != c[0]


async def test_versions_answer_differently() -> None:
    v1 = await run(SimEngine("v1", "m", FAST), max_tokens=40)
    v2 = await run(SimEngine("v2", "m", FAST), max_tokens=40)
    assert v1[0][0] != v2[0][0]


async def test_max_tokens_n_and_usage() -> None:
    texts, finish, usage = await run(SimEngine("v1", "m", FAST), max_tokens=5, n=3)
    assert sorted(texts) == [0, 1, 2]
    assert all(len(t.split()) == 5 for t in texts.values())
    assert set(finish.values()) == {"length"}
    assert usage == Usage(prompt_tokens=1, completion_tokens=15)


async def test_stop_sequence_truncates_and_finishes_with_stop() -> None:
    texts, _, _ = await run(SimEngine("v1", "m", FAST), max_tokens=30)
    word = texts[0].split()[2]
    stopped, finish, _ = await run(SimEngine("v1", "m", FAST), max_tokens=30, stop=[word])
    assert word not in stopped[0]
    assert finish[0] == "stop"


async def test_prompt_longer_than_context_is_400() -> None:
    with pytest.raises(EngineError) as err:
        await run(SimEngine("v1", "m", FAST), prompt="word " * 60, max_tokens=8)
    assert err.value.status == 400
    assert err.value.code == "context_length_exceeded"


async def test_error_rate_one_always_fails_with_500() -> None:
    engine = SimEngine("v2", "m", SimProfile(tpot_s=0, ttft_s=0, error_rate=1.0))
    with pytest.raises(EngineError) as err:
        await run(engine)
    assert err.value.status == 500
