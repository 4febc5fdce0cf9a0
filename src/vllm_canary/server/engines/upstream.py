"""The `upstream` engine: any OpenAI-compatible server (a vLLM pod, TGI, llama.cpp, ...) that
the relay front (server/relay.py) forwards every request to, bytes unchanged.

The engine itself only knows where the upstream is and whether it is up: `ready()` follows a
periodic probe of its /health (or /v1/models for servers without one), which also learns the
served model names for the metrics' `model` label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, runtime_checkable

import aiohttp

log = logging.getLogger(__name__)


@runtime_checkable
class Relayed(Protocol):
    """A backend the relay front forwards to (engines `upstream` and `vllm`)."""

    name: str

    @property
    def base_url(self) -> str:
        """scheme://host:port[/prefix] of the upstream; request targets are appended."""
        ...

    async def start(self) -> None:
        """Acquire resources; may return before the upstream is ready."""

    async def close(self) -> None:
        """Release resources; called once on shutdown."""

    def ready(self) -> bool:
        """True when requests can be relayed (drives the front's GET /health)."""
        ...

    def model_names(self) -> list[str]:
        """Served model names; the first labels the front's metrics."""
        ...


def strip_v1(url: str) -> str:
    """A base URL without a trailing slash or `/v1` (clients' base URLs often end in it; the
    relay appends the request's own path, which has it)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class UpstreamEngine:
    """An OpenAI-compatible server at `base_url`, probed every `health_interval` seconds."""

    name = "upstream"
    gate = False  # relayed even when the probe finds it down: its answer, or a 502

    def __init__(self, base_url: str, *, model_name: str | None = None,
                 health_interval: float = 2.0) -> None:
        self._base_url = strip_v1(base_url)
        self.model_name = model_name
        self.health_interval = health_interval
        self._session: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._ready = False
        self._upstream_models: list[str] = []

    @property
    def base_url(self) -> str:
        return self._base_url

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def start(self) -> None:
        """Probe once (so a live upstream is ready at once), then keep probing."""
        await self.probe()
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="upstream-probe")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    def model_names(self) -> list[str]:
        """The configured name, else what the upstream's /v1/models lists (empty until
        probed)."""
        if self.model_name:
            return [self.model_name]
        return list(self._upstream_models)

    async def probe(self) -> bool:
        """GET /health (falling back to /v1/models for servers without one); refresh the
        model ids. An upstream that wants a key (401/403) is up: the key is the clients'
        (their Authorization header is relayed), not the front's."""
        session = self._ensure_session()
        timeout = aiohttp.ClientTimeout(total=min(5.0, max(1.0, self.health_interval)))
        healthy = False
        try:
            async with session.get(f"{self._base_url}/health", timeout=timeout) as resp:
                await resp.read()
                healthy = resp.status in (200, 401, 403)
                no_health = resp.status in (404, 405)
            if healthy or no_health:
                async with session.get(f"{self._base_url}/v1/models", timeout=timeout) as resp:
                    if resp.status == 200:
                        body = await resp.json(content_type=None)
                        ids = [str(m["id"]) for m in body.get("data", []) if "id" in m]
                        self._upstream_models = ids or self._upstream_models
                    healthy = healthy or resp.status in (200, 401, 403)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError,
                TypeError) as exc:
            log.debug("probe of %s failed: %r", self._base_url, exc)
            healthy = False
        self._ready = healthy
        return healthy

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.probe()
