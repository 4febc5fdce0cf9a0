"""Ask each model version for an answer to sampled prompts: bounded concurrency, a timeout
per request, retries with backoff on transient failures, and a progress bar on stderr.

A failed answer is recorded on its item (with the error), never fatal to the run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Our own questions must not land in the request logs and be sampled as "real" prompts.
HEADERS = {"x-no-log": "1"}


@dataclass(frozen=True)
class Target:
    """A model version to ask: its name in the sample file and its OpenAI-compatible base URL."""

    name: str
    url: str
    model: str | None = None  # None: the server's default model


@dataclass(frozen=True)
class Policy:
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5


def answer_text(endpoint: str, body: dict[str, Any]) -> tuple[str, str | None]:
    """Choice 0's text and finish reason from a completions or chat completions response."""
    choice = (body.get("choices") or [{}])[0]
    if endpoint.endswith("chat/completions"):
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return str(text), choice.get("finish_reason")


async def ask(
    session: aiohttp.ClientSession, target: Target, request: dict[str, Any], policy: Policy
) -> dict[str, Any]:
    """One answer: {text, latency_s, error, status, finish_reason, completion_tokens, attempts}."""
    endpoint = request["endpoint"]
    payload = {k: v for k, v in request.items() if k in ("prompt", "messages")}
    payload.update(request["params"])
    if target.model:
        payload["model"] = target.model
    url = target.url.rstrip("/") + endpoint
    error: str | None = None
    status: int | None = None
    for attempt in range(1, policy.retries + 2):
        started = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
            async with session.post(url, json=payload, timeout=timeout, headers=HEADERS) as resp:
                status = resp.status
                if resp.status == 200:
                    body = await resp.json(content_type=None)
                    text, finish = answer_text(endpoint, body)
                    return {"text": text, "latency_s": round(time.monotonic() - started, 6),
                            "error": None, "status": 200, "finish_reason": finish,
                            "completion_tokens": (body.get("usage") or {}).get("completion_tokens"),
                            "attempts": attempt}
                error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                if resp.status not in RETRY_STATUS:
                    break
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
            status = None
        if attempt <= policy.retries:
            await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))
    return {"text": None, "latency_s": None, "error": error, "status": status,
            "finish_reason": None, "completion_tokens": None, "attempts": policy.retries + 1}


class Progress:
    """A one-line progress bar on a terminal; plain periodic lines when not a terminal."""

    def __init__(self, total: int, out: TextIO = sys.stderr, label: str = "answers") -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.out, self.label = out, label
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if self.done == self.total or now - self._last >= (0.1 if self.tty else 5.0):
            self._last = now
            self.draw()

    def draw(self) -> None:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        line = (f"{self.label} [{bar:<30}] {self.done}/{self.total} "
                f"{rate:.1f}/s failed={self.failed}")
        if self.tty:
            end = "\n" if self.done == self.total else ""
            self.out.write("\r" + line + end)
        else:
            self.out.write(line + "\n")
        self.out.flush()


async def answer_all(
    jobs: list[tuple[str, dict[str, Any]]],
    targets: list[Target],
    policy: Policy,
    on_item: Callable[[str, dict[str, dict[str, Any]]], Awaitable[None] | None],
    progress: Progress | None = None,
) -> None:
    """Answer every (item id, request) from every target; `on_item` gets each finished item."""
    sem = asyncio.Semaphore(max(1, policy.concurrency))
    connector = aiohttp.TCPConnector(limit=max(1, policy.concurrency) * len(targets))

    async def one(session: aiohttp.ClientSession, target: Target, req: dict[str, Any]) -> Any:
        async with sem:
            result = await ask(session, target, req, policy)
        if progress is not None:
            progress.step(result["error"] is None)
        return result

    async def item(session: aiohttp.ClientSession, item_id: str, req: dict[str, Any]) -> None:
        results = await asyncio.gather(*(one(session, t, req) for t in targets))
        done = on_item(item_id, {t.name: r for t, r in zip(targets, results, strict=True)})
        if asyncio.iscoroutine(done):
            await done

    async with aiohttp.ClientSession(connector=connector) as session:
        # Feed items through a bounded window so a huge N does not create all tasks at once.
        pending: set[asyncio.Task[None]] = set()
        for item_id, req in jobs:
            pending.add(asyncio.create_task(item(session, item_id, req)))
            if len(pending) >= policy.concurrency * 4:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    t.result()
        if pending:
            for t in (await asyncio.wait(pending))[0]:
                t.result()
