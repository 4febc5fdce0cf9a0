"""Run a model server until SIGTERM/SIGINT: drain in-flight requests, then stop the engine.
Exits non-zero when the engine dies underneath (e.g. vLLM's child process).

Engine `sim` is served by the OpenAI front (server/app.py); engines `vllm` and `upstream` by
the relay front (server/relay.py), which forwards every request to them unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from aiohttp import web

from vllm_canary.errors import UserError
from vllm_canary.server.app import ModelServer
from vllm_canary.server.engines import build_engine
from vllm_canary.server.gpu import nvml_utilization
from vllm_canary.server.httperrors import JsonErrorsRunner
from vllm_canary.server.relay import RelayFront, drain, listen
from vllm_canary.server.requestlog import RequestLog
from vllm_canary.server.settings import ServeSettings

log = logging.getLogger("vllm_canary.server")


async def _listen(runner: web.AppRunner, host: str, port: int) -> None:
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason.lower()}") from None


async def _until_stopped(engine: Any, settings: ServeSettings) -> bool:
    """Wait for SIGTERM/SIGINT or the engine's death; True when the engine died."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    failed = getattr(engine, "failed", None)  # an asyncio.Event set when the engine died
    if failed is not None:
        waits.append(asyncio.ensure_future(failed.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    engine_died = failed is not None and failed.is_set()
    if engine_died:
        log.error("engine %s stopped unexpectedly; shutting down", engine.name)
    else:
        log.warning("draining in-flight requests (up to %.0fs)", settings.drain_timeout)
    return engine_died


def _announce(settings: ServeSettings, engine: Any, model: str) -> None:
    log.warning(
        "serving %s (engine %s, model %s) on http://%s:%d%s", settings.version,
        engine.name, model, settings.host, settings.port,
        f", metrics on :{settings.metrics_port}" if settings.metrics_port else "",
    )


async def serve(settings: ServeSettings) -> int:
    engine = build_engine(settings)
    request_log = None
    if settings.log_dir is not None:
        request_log = RequestLog(settings.log_dir, settings.version, redact=settings.log_redact,
                                 sample_rate=settings.log_sample_rate)
    utilization = nvml_utilization() if settings.engine != "sim" else None
    if settings.engine == "sim":
        return await _serve_sim(settings, engine, request_log, utilization)
    return await _serve_relay(settings, engine, request_log, utilization)


async def _serve_relay(settings: ServeSettings, engine: Any, request_log: RequestLog | None,
                       utilization: Any) -> int:
    front: Any = RelayFront(settings, engine, request_log=request_log, utilization=utilization)
    if settings.lora or settings.enable_lora:  # adapter versions on this vLLM (lorafront.py)
        from vllm_canary.server.lorafront import LoraFront

        front = LoraFront(settings, front)
    servers = []
    try:
        await front.start()
        servers.append(await listen(front.handle, settings.host, settings.port,
                                    settings.max_body_bytes, settings.version))
        if settings.metrics_port:
            servers.append(await listen(front.handle_metrics, settings.host,
                                        settings.metrics_port, 1024, settings.version))
        _announce(settings, engine, front.model)
        engine_died = await _until_stopped(engine, settings)
        front.draining = True
        await asyncio.gather(*(drain(s, 0 if engine_died else settings.drain_timeout)
                               for s in servers))
        servers.clear()
        return 1 if engine_died else 0
    finally:
        for server in servers:
            await server.close()
        await front.close()


async def _serve_sim(settings: ServeSettings, engine: Any, request_log: RequestLog | None,
                     utilization: Any) -> int:
    server = ModelServer(settings, engine, request_log=request_log, utilization=utilization)
    runners: list[web.AppRunner] = []
    try:
        await server.start()
        api = JsonErrorsRunner(server.app(), handler_cancellation=True, access_log=None,
                               shutdown_timeout=settings.drain_timeout)
        runners.append(api)
        await api.setup()
        await _listen(api, settings.host, settings.port)
        if settings.metrics_port:
            metrics = JsonErrorsRunner(server.metrics_app(), access_log=None)
            runners.append(metrics)
            await metrics.setup()
            await _listen(metrics, settings.host, settings.metrics_port)
        _announce(settings, engine, server.model)
        engine_died = await _until_stopped(engine, settings)
        server.draining = True
        return 1 if engine_died else 0
    finally:
        for runner in runners:
            await runner.cleanup()
        await server.close()
