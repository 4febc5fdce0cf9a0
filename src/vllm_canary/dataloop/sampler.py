"""Pick N distinct real prompts from a day's request logs, uniformly and with bounded memory.

Bottom-k sampling: every normalised prompt gets a priority from a keyed hash (seed + prompt),
and the N lowest priorities win. Duplicates share a priority, so they deduplicate for free;
memory is O(N) whatever the log size; the same seed and logs always give the same sample;
and a larger N gives a superset of a smaller one, so re-running with more keeps what exists.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from vllm_canary.dataloop.logs import ReadStats


def normalise(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a prompt, for deduplication."""
    if not text.isascii():  # NFKC is the identity on ASCII, and the costly step
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split()).casefold()


def prompt_key(rec: dict[str, Any]) -> str | None:
    """The normalised prompt of a log record (chat messages as `role: content` lines)."""
    messages = rec.get("messages")
    if isinstance(messages, list) and messages:
        parts = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                return None
            parts.append(f"{m.get('role', 'user')}: {normalise(m['content'])}")
        key = "\n".join(parts)
        return "chat\n" + key if key.strip() else None
    prompt = rec.get("prompt")
    if isinstance(prompt, str) and (text := normalise(prompt)):
        return text
    return None


def sample_id(day: date, key: str) -> str:
    """Stable id of a sample: the same normalised prompt on the same day gives the same id."""
    return hashlib.sha256(f"{day:%Y%m%d}\n{key}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _keyed_hash(seed: int) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=8, key=str(seed).encode())


def priority(seed: int, key: str) -> int:
    """A uniform 64-bit priority per (seed, key): keyed BLAKE2b, so it is stable across runs."""
    h = _keyed_hash(seed).copy()
    h.update(key.encode())
    return int.from_bytes(h.digest(), "big")


def exclusion(rec: dict[str, Any]) -> str | None:
    """Why a record must not be sampled (None when it may be)."""
    if rec.get("opt_out"):
        return "opted_out"
    status = rec.get("status")
    if rec.get("error") or not isinstance(status, int) or not 200 <= status < 300:
        return "failed"
    if rec.get("endpoint") not in (None, "/v1/completions", "/v1/chat/completions"):
        return "other_endpoint"
    return None


@dataclass(frozen=True)
class Picked:
    """One selected prompt: its priority (lower wins), key and the first record that had it."""

    priority: int
    key: str
    record: dict[str, Any]


class BottomK:
    """The n lowest-priority distinct keys seen so far, with the record of each."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._heap: list[tuple[int, str]] = []  # max-heap via negated priority
        self.kept: dict[str, Picked] = {}

    def wants(self, key: str) -> int | None:
        """The key's priority if it would enter the sample now, else None."""
        if key in self.kept:
            return None
        prio = priority(self.seed, key)
        if len(self._heap) < self.n or prio < -self._heap[0][0]:
            return prio
        return None

    def add(self, prio: int, key: str, record: dict[str, Any]) -> None:
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, (-prio, key))
        else:
            _, dropped = heapq.heappushpop(self._heap, (-prio, key))
            del self.kept[dropped]
        self.kept[key] = Picked(prio, key, record)

    def offer(self, rec: dict[str, Any], stats: ReadStats) -> None:
        """Consider one parsed record: excluded (and counted), a duplicate, or a candidate."""
        reason = exclusion(rec)
        key = None if reason else prompt_key(rec)
        if reason or key is None:
            stats.exclude(reason or "empty")
            return
        prio = self.wants(key)
        if prio is not None:
            self.add(prio, key, rec)

    def picked(self) -> list[Picked]:
        return sorted(self.kept.values(), key=lambda p: p.priority)


def select(records: Iterable[dict[str, Any]], n: int, seed: int, stats: ReadStats) -> list[Picked]:
    """The n distinct prompts with the lowest keyed-hash priority, lowest first."""
    bottom = BottomK(n, seed)
    for rec in records:
        bottom.offer(rec, stats)
    return bottom.picked()


def request_of(rec: dict[str, Any]) -> dict[str, Any]:
    """What to send to each version: the logged endpoint and params, one non-streamed choice."""
    params = {k: v for k, v in (rec.get("params") or {}).items() if v is not None}
    params.update(n=1, stream=False)
    chat = isinstance(rec.get("messages"), list) and bool(rec.get("messages"))
    body: dict[str, Any] = {"messages": rec["messages"]} if chat else {"prompt": rec["prompt"]}
    return {"endpoint": "/v1/chat/completions" if chat else "/v1/completions",
            "params": params, **body}

