"""Engines behind the model server, built from settings by name (a dict factory): `sim` is an
Engine served by the OpenAI front (server/app.py); `vllm` and `upstream` are Relayed backends
that the relay front (server/relay.py) forwards to."""

from __future__ import annotations

from collections.abc import Callable

from vllm_canary.server.engines.base import Engine
from vllm_canary.server.engines.upstream import Relayed
from vllm_canary.server.settings import ServeSettings


def _sim(s: ServeSettings) -> Engine:
    from vllm_canary.server.engines.sim import SimEngine, SimProfile

    profile = SimProfile(
        ttft_s=s.ttft_ms / 1000, tpot_s=s.tpot_ms / 1000, latency_factor=s.latency_factor,
        error_rate=s.error_rate, max_model_len=s.max_model_len,
    )
    return SimEngine(s.version, s.served_model_name(), profile, seed=s.seed)


def _upstream(s: ServeSettings) -> Relayed:
    from vllm_canary.server.engines.upstream import UpstreamEngine

    assert s.upstream is not None
    return UpstreamEngine(s.upstream, model_name=s.model_name)


def _vllm(s: ServeSettings) -> Relayed:
    from vllm_canary.server.engines.vllm import VllmEngine

    assert s.model is not None
    args, env = s.vllm_args, None
    if s.lora or s.enable_lora:  # LoRA versions: --enable-lora and runtime loading on
        from vllm_canary.server.lora import lora_plan

        plan = lora_plan(s)
        args, env = plan.child_args, plan.env
    return VllmEngine(
        model_dir=s.model, model_name=s.served_model_name(), python=s.vllm_python,
        extra_args=args, env=env, startup_timeout=s.startup_timeout,
        log_file=s.log_dir / f"vllm-{s.version}.log" if s.log_dir else None,
    )


ENGINES: dict[str, Callable[[ServeSettings], Engine | Relayed]] = {
    "sim": _sim,
    "upstream": _upstream,
    "vllm": _vllm,
}


def build_engine(settings: ServeSettings) -> Engine | Relayed:
    return ENGINES[settings.engine](settings)
