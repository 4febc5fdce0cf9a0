"""Label Studio formats: labeling configs, import tasks built from sample items, and the
annotations read back from a Label Studio JSON export (validated, refusals reported).

Everything `evaluate` needs (sample id, version or side mapping) sits under `data.meta`,
which the labeling configs never display, so an export alone is enough to evaluate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["rating", "pairwise"]
MODES: tuple[Mode, ...] = ("rating", "pairwise")
MAX_RATING = 5

RATING_CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Answer"/>
  <Text name="answer" value="$answer"/>
  <Header value="How good is this answer? (1 = useless, 5 = excellent)"/>
  <Rating name="score" toName="answer" maxRating="5" required="true"/>
</View>
"""

PAIRWISE_CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Which answer is better? Click it."/>
  <Pairwise name="pw" toName="answer_a,answer_b"/>
  <Text name="answer_a" value="$answer_a"/>
  <Text name="answer_b" value="$answer_b"/>
</View>
"""


def config_for(mode: Mode) -> str:
    return RATING_CONFIG if mode == "rating" else PAIRWISE_CONFIG


def prompt_text(item: dict[str, Any]) -> str:
    """What the annotator reads as the prompt (chat turns as `role: content` lines)."""
    if "messages" in item:
        return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}"
                           for m in item["messages"])
    return str(item.get("prompt", ""))


def left_is_first(sample_id: str, seed: int) -> bool:
    """Deterministic coin per sample: does the first version go on the left?"""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[0] % 2 == 0


def tasks_for(
    items: list[dict[str, Any]], mode: Mode, versions: tuple[str, str] = ("v1", "v2"),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Import tasks: one per answer (rating) or one per prompt with randomised sides (pairwise).
    Items whose needed answers failed are left out (nothing to judge)."""
    tasks = []
    for item in items:
        answers = item.get("answers") or {}
        ok = {v: a["text"] for v, a in answers.items()
              if a.get("error") is None and isinstance(a.get("text"), str)}
        meta = {"sample_id": item["id"], "day": item.get("day"), "mode": mode}
        if mode == "rating":
            for version in versions:
                if version in ok:
                    tasks.append({"data": {
                        "prompt": prompt_text(item), "answer": ok[version],
                        "meta": {**meta, "uid": f"{item['id']}:{version}", "version": version}}})
        elif all(v in ok for v in versions):
            first, second = versions
            left, right = (first, second) if left_is_first(item["id"], seed) else (second, first)
            tasks.append({"data": {
                "prompt": prompt_text(item), "answer_a": ok[left], "answer_b": ok[right],
                "meta": {**meta, "uid": f"{item['id']}:pair", "left": left, "right": right}}})
    return tasks


@dataclass(frozen=True)
class Rating:
    sample_id: str
    version: str
    score: int
    annotator: str


@dataclass(frozen=True)
class Preference:
    """One pairwise judgement: the version chosen over the other."""

    sample_id: str
    winner: str
    loser: str
    annotator: str


@dataclass
class Labels:
    ratings: list[Rating] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    skipped: int = 0  # cancelled annotations and tasks nobody annotated


def _annotator(ann: dict[str, Any]) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return str(who if who is not None else ann.get("id", "?"))


def _read_annotation(task: dict[str, Any], ann: dict[str, Any], labels: Labels) -> None:
    meta = (task.get("data") or {}).get("meta") or {}
    where = f"task {task.get('id', '?')} annotation {ann.get('id', '?')}"
    sid = meta.get("sample_id")
    if not sid:
        labels.refused.append(f"{where}: no data.meta.sample_id (not a vllm-canary task)")
        return
    results = [r for r in ann.get("result") or [] if r.get("type") in ("rating", "pairwise")]
    if len(results) != 1:
        labels.refused.append(
            f"{where}: expected one rating or pairwise result, got {len(results)}")
        return
    res = results[0]
    value = res.get("value") or {}
    who = _annotator(ann)
    if res["type"] == "rating":
        score, version = value.get("rating"), meta.get("version")
        if not version:
            labels.refused.append(f"{where}: rating on a task without data.meta.version")
        elif isinstance(score, bool) or not isinstance(score, int | float) or score != int(score) \
                or not 1 <= score <= MAX_RATING:
            labels.refused.append(f"{where}: rating {score!r} is not an integer 1..{MAX_RATING}")
        else:
            labels.ratings.append(Rating(sid, str(version), int(score), who))
        return
    side, left, right = value.get("selected"), meta.get("left"), meta.get("right")
    if not left or not right:
        labels.refused.append(f"{where}: pairwise result on a task without data.meta.left/right")
    elif side not in ("left", "right"):
        labels.refused.append(f"{where}: pairwise selection {side!r} is not left or right")
    else:
        winner, loser = (left, right) if side == "left" else (right, left)
        labels.preferences.append(Preference(sid, str(winner), str(loser), who))


def parse_export(tasks: Any) -> Labels:
    """Annotations of a Label Studio JSON export (a list of tasks with `annotations`)."""
    labels = Labels()
    if not isinstance(tasks, list):
        labels.refused.append("export is not a JSON list of tasks")
        return labels
    for task in tasks:
        if not isinstance(task, dict):
            labels.refused.append("an entry of the export is not a task object")
            continue
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        live = [a for a in anns if not a.get("was_cancelled")]
        labels.skipped += len(anns) - len(live) + (0 if anns else 1)
        for ann in live:
            _read_annotation(task, ann, labels)
    return labels
