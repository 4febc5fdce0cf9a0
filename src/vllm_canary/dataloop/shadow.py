"""Dark-launch pairs: v1's served answer and v2's shadow answer to the same request, joined by
request id from a day's request logs, and the comparisons made on each pair.

A served record has no `shadow` field (or `false`); a shadow record has `"shadow": true` and the
request id of the request it copies (the gateway and Envoy keep `x-request-id` on mirrors; the
log sampling is decided by that id, so both servers log the same requests).

Fields the comparisons read, when the log has them: `completion`, `finish_reason`, `status`,
`error`, `latency_s`, `ttft_s`, `prompt_tokens`, `completion_tokens`; whether JSON was asked:
`params.response_format.type` (or a top-level `response_format`) of `json_object`/`json_schema`;
tool calls: `tool_calls` [{name, arguments}] answered, `tools` (OpenAI's list) offered; an
explicit refusal: `refusal` (OpenAI's message field).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from vllm_canary.dataloop import logs
from vllm_canary.dataloop.sampler import normalise

# Refusal openers of instruction-tuned models (a heuristic: the report says so). Matched on
# the first 200 characters, case-insensitively.
_REFUSAL = re.compile(
    r"^\W*(?:i\s*(?:'m|am)\s+(?:sorry|afraid)\b.{0,60}\b(?:can(?:no|')t|unable|not able)"
    r"|i\s+(?:can(?:no|')t|won'?t|will not|am unable to|'m unable to|am not able to)\s+"
    r"(?:help|assist|provide|comply|do that|answer|fulfil)"
    r"|(?:sorry|unfortunately),?\s+(?:but\s+)?i\s+(?:can(?:no|')t|won'?t|am unable)"
    r"|as an ai(?: language model)?,?\s+i\s+(?:can(?:no|')t|don'?t|am not))",
    re.IGNORECASE | re.DOTALL)


def is_shadow(rec: dict[str, Any]) -> bool:
    return rec.get("shadow") is True


def failed(rec: dict[str, Any]) -> bool:
    """An answer that is an error (HTTP status outside 2xx, or an error recorded)."""
    status = rec.get("status")
    return bool(rec.get("error")) or not isinstance(status, int) or not 200 <= status < 300


def is_refusal(rec: dict[str, Any]) -> bool:
    """An explicit OpenAI `refusal`, or a completion that opens like a refusal."""
    if rec.get("refusal"):
        return True
    text = rec.get("completion")
    return isinstance(text, str) and bool(_REFUSAL.search(text[:200]))


def asks_json(rec: dict[str, Any]) -> bool:
    fmt = (rec.get("params") or {}).get("response_format") or rec.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def json_valid(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def similarity(a: str, b: str) -> float:
    """Normalised text similarity in [0, 1]: difflib's ratio over the words of both texts
    after case, width and whitespace folding (1.0 when both are empty)."""
    from difflib import SequenceMatcher

    wa, wb = normalise(a).split(), normalise(b).split()
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def _tool_schemas(rec: dict[str, Any]) -> dict[str, Any]:
    tools = rec.get("tools") or (rec.get("params") or {}).get("tools") or []
    out = {}
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters") or {}
    return out


def tool_args_valid(call: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """The call names an offered function and its arguments are JSON valid against its
    parameters schema (JSON Schema, checked by `jsonschema`)."""
    import jsonschema

    name, args = call.get("name"), call.get("arguments")
    if name not in schemas:
        return False
    try:
        value = json.loads(args) if isinstance(args, str) else args
        jsonschema.validate(value, schemas[name])
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return False
    return True


@dataclass
class Comparison:
    """What one pair shows (None where it does not apply)."""

    request_id: str
    exact: bool
    similarity: float
    length_ratio: float | None  # v2 / v1 output length (tokens when both known, else chars)
    finish_changed: bool
    json_asked: bool
    json_valid_v1: bool | None
    json_valid_v2: bool | None
    tool_calls: bool
    same_function: bool | None
    tool_args_valid_v2: bool | None
    refusal_v1: bool
    refusal_v2: bool
    latency_diff_s: float | None
    ttft_diff_s: float | None
    tokens_diff: int | None

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _diff(a: Any, b: Any) -> float | None:
    return float(b) - float(a) if isinstance(a, int | float) and isinstance(b, int | float) \
        else None


def compare(v1: dict[str, Any], v2: dict[str, Any]) -> Comparison:
    """Compare v1's served answer with v2's shadow answer to the same request."""
    t1, t2 = str(v1.get("completion") or ""), str(v2.get("completion") or "")
    n1, n2 = v1.get("completion_tokens"), v2.get("completion_tokens")
    if isinstance(n1, int) and isinstance(n2, int) and n1 > 0:
        ratio: float | None = n2 / n1
    else:
        ratio = len(t2) / len(t1) if t1 else (None if t2 else 1.0)
    wants_json = asks_json(v1) or asks_json(v2)
    calls1, calls2 = v1.get("tool_calls") or [], v2.get("tool_calls") or []
    has_calls = bool(calls1 or calls2)
    same_fn = args_ok = None
    if has_calls:
        names1 = [c.get("name") for c in calls1 if isinstance(c, dict)]
        names2 = [c.get("name") for c in calls2 if isinstance(c, dict)]
        same_fn = names1 == names2
        schemas = _tool_schemas(v1) or _tool_schemas(v2)
        args_ok = bool(calls2) and all(isinstance(c, dict) and tool_args_valid(c, schemas)
                                       for c in calls2)
    tokens = _diff(n1, n2)
    return Comparison(
        request_id=str(v1.get("request_id")),
        exact=t1 == t2 and calls1 == calls2,
        similarity=round(similarity(t1, t2), 6),
        length_ratio=None if ratio is None else round(ratio, 6),
        finish_changed=v1.get("finish_reason") != v2.get("finish_reason"),
        json_asked=wants_json,
        json_valid_v1=json_valid(t1) if wants_json else None,
        json_valid_v2=json_valid(t2) if wants_json else None,
        tool_calls=has_calls, same_function=same_fn, tool_args_valid_v2=args_ok,
        refusal_v1=is_refusal(v1), refusal_v2=is_refusal(v2),
        latency_diff_s=_diff(v1.get("latency_s"), v2.get("latency_s")),
        ttft_diff_s=_diff(v1.get("ttft_s"), v2.get("ttft_s")),
        tokens_diff=None if tokens is None else int(tokens),
    )


UNPAIRED_REASONS = ("v2_error", "v1_error", "opted_out", "no_shadow", "shadow_only")


@dataclass
class Joined:
    """A day's pairs plus what could not be paired, by reason:
    `v2_error` (v2's shadow answer failed), `v1_error` (the served answer failed),
    `opted_out` (the client sent `x-no-log`: no text to compare),
    `no_shadow` (served and logged, no shadow line: not mirrored, mirror dropped, v2 down),
    `shadow_only` (a shadow line without its served line: v1 did not log it)."""

    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    unpaired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNPAIRED_REASONS, 0))
    served: int = 0
    shadow: int = 0
    shadow_failed: int = 0
    stats: logs.ReadStats = field(default_factory=logs.ReadStats)


def day_records(log_dirs: Iterable[Path], day: date, stats: logs.ReadStats,
                ) -> Iterator[dict[str, Any]]:
    files = sorted({f for d in log_dirs for f in logs.day_files(Path(d), day)})
    return logs.read_records(files, stats)


def _generation(rec: dict[str, Any]) -> bool:
    return rec.get("endpoint") in (None, "/v1/completions", "/v1/chat/completions") \
        and isinstance(rec.get("request_id"), str)


def join(log_dirs: Iterable[Path], day: date, baseline: str = "v1",
         candidate: str = "v2") -> Joined:
    """Pair the day's served `baseline` records with the `candidate`'s shadow records.

    Two passes over the files: the shadow records are held by request id (memory grows with
    the day's shadow lines), then the served records are streamed past them."""
    dirs = list(log_dirs)
    out = Joined()
    shadows: dict[str, dict[str, Any]] = {}
    for rec in day_records(dirs, day, out.stats):
        if is_shadow(rec) and rec.get("version") == candidate and _generation(rec):
            out.shadow += 1
            shadows.setdefault(rec["request_id"], rec)
    seen: set[str] = set()
    for rec in day_records(dirs, day, logs.ReadStats()):
        if is_shadow(rec) or rec.get("version") != baseline or not _generation(rec):
            continue
        rid = rec["request_id"]
        if rid in seen:
            continue
        seen.add(rid)
        out.served += 1
        mate = shadows.get(rid)
        if mate is None:
            out.unpaired["no_shadow"] += 1
        elif rec.get("opt_out") or mate.get("opt_out"):
            out.unpaired["opted_out"] += 1
        elif failed(rec):
            out.unpaired["v1_error"] += 1
        elif failed(mate):
            out.unpaired["v2_error"] += 1
        else:
            out.pairs.append((rec, mate))
    out.unpaired["shadow_only"] = sum(1 for rid in shadows if rid not in seen)
    out.shadow_failed = sum(1 for s in shadows.values() if failed(s))
    return out


# ---- `sample --from-shadow` ----------------------------------------------------------------

PROVENANCE = "shadow"  # item["source"]["kind"]: a real request, both answers as logged


def answer_of(rec: dict[str, Any]) -> dict[str, Any]:
    """A logged answer in the shape `sample` records a generated one (attempts 0: logged)."""
    error = rec.get("error") or (None if not failed(rec) else f"HTTP {rec.get('status')}")
    return {"text": None if error else str(rec.get("completion") or ""),
            "latency_s": rec.get("latency_s"), "error": error, "status": rec.get("status"),
            "finish_reason": rec.get("finish_reason"),
            "completion_tokens": rec.get("completion_tokens"), "attempts": 0,
            "ttft_s": rec.get("ttft_s"), "logged": True}


def sample_pairs(log_dirs: list[Path], day: date, n: int, out_dir: Path, *, seed: int = 0,
                 baseline: str = "v1", candidate: str = "v2") -> Any:
    """N distinct real prompts of the day that were answered by both: `baseline` serving and
    `candidate` in shadow, with the answers as logged (nothing is regenerated).

    The rules of `sample`: bottom-k by keyed hash over the candidate's shadow records (the
    mirrored ones), so memory is O(N), duplicates collapse, the same seed gives the same sample
    and a re-run keeps what the file has. A second pass finds the served answers of the picked
    request ids; up to 2N are held so a pick whose served answer failed leaves room for the next.
    """
    from vllm_canary.dataloop import collect, samplefile, sampler

    stats = logs.ReadStats()
    bottom = sampler.BottomK(2 * n, seed)
    for rec in day_records(log_dirs, day, stats):
        if not is_shadow(rec):
            continue
        if rec.get("version") != candidate:
            stats.exclude("other_version")
            continue
        bottom.offer(rec, stats)
    picked = bottom.picked()
    wanted = {p.record.get("request_id"): p for p in picked}
    served: dict[str, dict[str, Any]] = {}
    for rec in day_records(log_dirs, day, logs.ReadStats()):
        rid = rec.get("request_id")
        if (not is_shadow(rec) and rec.get("version") == baseline and rid in wanted
                and rid not in served):
            served[rid] = rec
    selected, missing = [], 0
    for p in picked:
        v1 = served.get(p.record.get("request_id"))
        if v1 is None or sampler.exclusion(v1) is not None:
            missing += 1
            continue
        item = collect.item_of(day, sampler.Picked(p.priority, p.key, v1))
        item["source"]["kind"] = PROVENANCE
        item["source"]["shadow_host"] = p.record.get("host")
        item["answers"] = {baseline: answer_of(v1), candidate: answer_of(p.record)}
        selected.append(item)
    if missing:
        stats.excluded["no_served_pair"] = missing
    path = samplefile.path_for(out_dir, day)
    items = collect.plan(samplefile.read_items(path, tolerate_torn=True), [], selected, n)
    samplefile.write_atomic(path, items)
    return collect.SampleResult(path, len(items), 0, 0, stats)
