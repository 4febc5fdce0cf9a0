"""Run a model server until SIGTERM/SIGINT: drain in-flight requests, then stop the engine.
Exits non-zero when the engine dies underneath (e.g. vLLM's child process)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from vllm_canary.errors import UserError
from vllm_canary.server.app import ModelServer
from vllm_canary.server.engines import build_engine
from vllm_canary.server.gpu import nvml_utilization
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


async def serve(settings: ServeSettings) -> int:
    engine = build_engine(settings)
    request_log = None
    if settings.log_dir is not None:
        request_log = RequestLog(settings.log_dir, settings.version, redact=settings.log_redact,
                                 sample_rate=settings.log_sample_rate)
    utilization = nvml_utilization() if settings.engine != "sim" else None
    server = ModelServer(settings, engine, request_log=request_log, utilization=utilization)
    runners: list[web.AppRunner] = []
    try:
        await server.start()
        api = web.AppRunner(server.app(), handler_cancellation=True, access_log=None,
                            shutdown_timeout=settings.drain_timeout)
        runners.append(api)
        await api.setup()
        await _listen(api, settings.host, settings.port)
        if settings.metrics_port:
            metrics = web.AppRunner(server.metrics_app(), access_log=None)
            runners.append(metrics)
            await metrics.setup()
            await _listen(metrics, settings.host, settings.metrics_port)
        log.warning(
            "serving %s (engine %s, model %s) on http://%s:%d%s", settings.version,
            engine.name, server.model, settings.host, settings.port,
            f", metrics on :{settings.metrics_port}" if settings.metrics_port else "",
        )
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
        server.draining = True
        return 1 if engine_died else 0
    finally:
        for runner in runners:
            await runner.cleanup()
        await server.close()
