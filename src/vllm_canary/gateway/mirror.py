"""Traffic mirroring (Istio `mirror`/`mirrors`): fire-and-forget copies whose answers are read,
discarded and counted, with the host marked `-shadow` as Envoy does."""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDict

from vllm_canary.gateway.endpoints import Endpoints
from vllm_canary.gateway.h1server import Incoming
from vllm_canary.gateway.routing import Destination
from vllm_canary.gateway.store import RouteStore
from vllm_canary.gateway.telemetry import Telemetry


def shadow_host(authority: str) -> str:
    """Istio/Envoy mark mirrored requests by suffixing the host with `-shadow`."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"


class Mirror:
    """Sends copies in the background; at most `max_in_flight` at once (others are dropped
    and counted), so a slow mirror target can never hold up real traffic."""

    def __init__(self, store: RouteStore, endpoints: Endpoints, telemetry: Telemetry,
                 session: aiohttp.ClientSession, max_in_flight: int = 256,
                 timeout: float = 300.0) -> None:
        self.store, self.endpoints, self.telemetry = store, endpoints, telemetry
        self.session, self.max_in_flight, self.timeout = session, max_in_flight, timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, dest: Destination, request: Incoming, headers: CIMultiDict[str],
             body: bytes) -> None:
        if len(self._tasks) >= self.max_in_flight:
            self.telemetry.mirror_dropped.inc()
            return
        shadow = CIMultiDict(headers)
        shadow["host"] = shadow_host(request.host)
        task = asyncio.create_task(self._copy(dest, request.method, request.path_qs, shadow,
                                              body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, dest: Destination, method: str, path_qs: str,
                    headers: CIMultiDict[str], body: bytes) -> None:
        ep = self.endpoints.pick(self.endpoints.select(self.store.table, dest))
        version = ep.version if ep else (dest.subset or "unknown")
        code = 0
        if ep is not None:
            try:
                async with asyncio.timeout(self.timeout), self.session.request(
                    method, ep.url + path_qs, headers=headers, data=body or None,
                    allow_redirects=False,
                ) as resp:
                    async for _ in resp.content.iter_any():
                        pass
                    code = resp.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                code = 0
        self.telemetry.mirrored.labels(version, str(code)).inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
