"""`vllm-canary analyze --serve`: the analysis as an HTTP endpoint, so Argo Rollouts'
AnalysisTemplate `web` provider gets our sequential verdicts (see docs/rollout.md)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from vllm_canary.analysis.verdict import combine
from vllm_canary.rollout.analyzer import Analyzer
from vllm_canary.rollout.metrics.base import MetricSource, Snapshot, window


class AnalysisService:
    """Polls a metric source every `interval` seconds into one Analyzer; answers verdicts."""

    def __init__(self, analyzer_factory: Any, source: MetricSource, interval: float) -> None:
        self.factory = analyzer_factory
        self.analyzer: Analyzer = analyzer_factory()
        self.source = source
        self.interval = interval
        self.last: Snapshot | None = None
        self.error = ""

    def poll(self) -> None:
        try:
            current = self.source.snapshot()
        except Exception as exc:  # no data is inconclusive, never a failure
            self.error = f"metrics unavailable: {exc}"
            return
        self.error = ""
        if self.last is not None:
            self.analyzer.observe(window(self.last, current, count_new=True), current)
        self.last = current

    def answer(self, metric: str) -> tuple[int, dict[str, Any]]:
        results = self.analyzer.results()
        if metric in ("", "all"):
            return 200, {"metric": "all", "verdict": str(combine(results)),
                         "metrics": [r.to_dict() for r in results], "error": self.error}
        for r in results:
            if r.metric == metric:
                body = r.to_dict()
                body["error"] = self.error
                return 200, body
        names = ", ".join(r.metric for r in results)
        return 404, {"error": {"message": f"unknown metric {metric!r}; analysed: {names}, all"}}

    def reset(self) -> None:
        """Forget the evidence (a new rollout starts); the threshold is picked again."""
        self.analyzer = self.factory()

    def app(self) -> web.Application:
        async def analyze(request: web.Request) -> web.Response:
            status, body = self.answer(request.query.get("metric", "all"))
            return web.json_response(body, status=status)

        async def reset(request: web.Request) -> web.Response:
            self.reset()
            return web.json_response({"reset": True})

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def loop(app: web.Application) -> Any:
            async def run() -> None:
                while True:
                    await asyncio.to_thread(self.poll)
                    await asyncio.sleep(self.interval)

            task = asyncio.create_task(run())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app = web.Application()
        app.router.add_get("/analyze", analyze)
        app.router.add_post("/reset", reset)
        app.router.add_get("/healthz", health)
        app.cleanup_ctx.append(loop)
        return app
