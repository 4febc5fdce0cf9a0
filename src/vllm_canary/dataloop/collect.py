"""`vllm-canary sample`: a day's logs → N distinct prompts → answers from each version →
`samples_YYYYMMDD.jsonl`. Re-running a day resumes: finished items are kept, failed or
missing answers are asked again, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from vllm_canary.dataloop import generate, logs, samplefile, sampler


@dataclass
class SampleResult:
    path: Path
    items: int
    asked: int
    failed_answers: int
    stats: logs.ReadStats = field(default_factory=logs.ReadStats)


def item_of(day: date, picked: sampler.Picked) -> dict[str, Any]:
    """A new sample item (no answers yet) from a selected log record."""
    rec = picked.record
    req = sampler.request_of(rec)
    item: dict[str, Any] = {"id": sampler.sample_id(day, picked.key), "day": day.isoformat(),
                            "endpoint": req["endpoint"]}
    if "messages" in req:
        item["messages"] = req["messages"]
    else:
        item["prompt"] = req["prompt"]
    item["params"] = req["params"]
    item["model"] = rec.get("model")
    item["source"] = {k: rec.get(k) for k in ("request_id", "ts", "version", "host")}
    item["answers"] = {}
    return item


def request_from_item(item: dict[str, Any]) -> dict[str, Any]:
    req = {"endpoint": item["endpoint"], "params": item.get("params") or {},
           "model": item.get("model")}
    if "messages" in item:
        req["messages"] = item["messages"]
    else:
        req["prompt"] = item["prompt"]
    return req


def complete(item: dict[str, Any], targets: list[generate.Target]) -> bool:
    answers = item.get("answers") or {}
    return all(t.name in answers and answers[t.name].get("error") is None for t in targets)


def plan(
    existing: list[dict[str, Any]], journal: list[dict[str, Any]],
    selected: list[dict[str, Any]], n: int,
) -> list[dict[str, Any]]:
    """The file's items in order: what was already written, then new picks up to n (an earlier,
    larger run is never shrunk). Journal entries carry the newest answers."""
    latest = {it["id"]: it for it in existing}
    latest.update({it["id"]: it for it in journal})
    order = [it["id"] for it in existing]
    seen = set(order)
    for it in selected:
        if len(order) >= max(n, len(existing)):
            break
        if it["id"] not in seen:
            order.append(it["id"])
            seen.add(it["id"])
            latest.setdefault(it["id"], it)
    return [latest[i] for i in order]


def run_sample(
    log_dirs: Path | list[Path], day: date, n: int, targets: list[generate.Target], out_dir: Path,
    *, seed: int = 0, policy: generate.Policy | None = None, progress_out: TextIO = sys.stderr,
) -> SampleResult:
    """Select, answer and write one day's sample file; safe to re-run."""
    policy = policy or generate.Policy()
    stats = logs.ReadStats()
    dirs = [log_dirs] if isinstance(log_dirs, Path) else log_dirs
    files = sorted({f for d in dirs for f in logs.day_files(d, day)})
    picked = sampler.select(logs.read_records(files, stats), n, seed, stats)
    path = samplefile.path_for(out_dir, day)
    journal_path = samplefile.journal_for(path)
    items = plan(samplefile.read_items(path, tolerate_torn=True),
                 samplefile.read_items(journal_path, tolerate_torn=True),
                 [item_of(day, p) for p in picked], n)
    todo = [it for it in items if not complete(it, targets)]
    by_id = {it["id"]: it for it in items}
    failed = 0
    if todo:
        journal = samplefile.Journal(journal_path)
        progress = generate.Progress(len(todo) * len(targets), progress_out)

        def finished(item_id: str, answers: dict[str, dict[str, Any]]) -> None:
            nonlocal failed
            item = by_id[item_id]
            kept = {k: v for k, v in (item.get("answers") or {}).items() if v.get("error") is None}
            for name, ans in answers.items():
                if name not in kept:
                    kept[name] = ans
                    failed += ans["error"] is not None
            item["answers"] = kept
            journal.append(item)

        jobs = [(it["id"], request_from_item(it)) for it in todo]
        try:
            asyncio.run(generate.answer_all(jobs, targets, policy, finished, progress))
        finally:
            journal.close()
    samplefile.write_atomic(path, items)
    journal_path.unlink(missing_ok=True)
    return SampleResult(path, len(items), len(todo), failed, stats)
