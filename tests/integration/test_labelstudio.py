"""Against a real Label Studio: push both modes (re-push never duplicates), annotate through
the API as two people would, pull, and evaluate the export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.labelstudio import LabelStudio
from vllm_canary.cli import main

pytestmark = pytest.mark.real


def write_samples(path: Path, n: int) -> Path:
    items = [{"id": f"s{i:03d}", "day": "2026-11-24", "endpoint": "/v1/completions",
              "prompt": f"Explain topic {i}", "params": {"max_tokens": 16},
              "answers": {v: {"text": f"{v} says {i}", "latency_s": 0.1, "error": None,
                              "completion_tokens": 3} for v in ("v1", "v2")}}
             for i in range(n)]
    items[0]["answers"]["v2"] = {"text": None, "latency_s": None, "error": "HTTP 500: boom"}
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def client(ls: LabelStudio) -> Any:
    from label_studio_sdk import LabelStudio as SDK

    return SDK(base_url=ls.url, api_key=ls.token)


def push(ls: LabelStudio, samples: Path, mode: str, title: str, capsys: Any) -> str:
    assert main(["labelstudio", "push", "--samples", str(samples), "--mode", mode,
                 "--url", ls.url, "--token", ls.token, "--title", title]) == 0
    return capsys.readouterr().out


def project_id(out: str) -> int:
    return int(out.split()[1])


def test_rating_round_trip(label_studio: LabelStudio, tmp_path: Path, capsys: Any) -> None:
    samples = write_samples(tmp_path / "samples_20261124.jsonl", 30)
    out = push(label_studio, samples, "rating", "rating round trip", capsys)
    pid = project_id(out)
    assert "created" in out and "59 tasks imported, 0 already there" in out  # s000's v2 failed
    again = push(label_studio, samples, "rating", "rating round trip", capsys)
    assert project_id(again) == pid and "0 tasks imported, 59 already there" in again

    sdk = client(label_studio)
    second = sdk.users.create(email="second-rater@example.com", username="second-rater")
    tasks = list(sdk.tasks.list(project=pid, fields="all"))
    assert len(tasks) == 59
    assert all(set(t.data) == {"prompt", "answer", "meta"} for t in tasks)
    for task in tasks:
        meta = task.data["meta"]
        score = 4 if meta["version"] == "v2" else 3
        for who, value in ((None, score), (second.id, score)):
            kw = {} if who is None else {"completed_by": who}
            sdk.annotations.create(id=task.id, result=[{
                "from_name": "score", "to_name": "answer", "type": "rating",
                "value": {"rating": value}}], **kw)
    # A person's slip the server accepts: 9 stars of 5.
    sdk.annotations.create(id=tasks[0].id, result=[{
        "from_name": "score", "to_name": "answer", "type": "rating", "value": {"rating": 9}}])

    labels = tmp_path / "labels.json"
    assert main(["labelstudio", "pull", "--url", label_studio.url, "--token", label_studio.token,
                 "--project", str(pid), "--out", str(labels)]) == 0
    captured = capsys.readouterr()
    assert "118 ratings" in captured.out and "1 refused" in captured.out
    assert "rating 9 is not an integer 1..5" in captured.err

    report = tmp_path / "report"
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(report)])
    doc = json.loads((report / "decision.json").read_text())
    assert (code, doc["decision"]) == (0, "promote")
    assert doc["quality"]["n_pairs"] == 29 and doc["quality"]["score_diff"] == pytest.approx(1.0)
    assert doc["quality"]["agreement"]["rating_exact_agreement"] == pytest.approx(1.0)
    assert doc["refused"] == 1
    assert "data:image/png;base64," in (report / "report.html").read_text()


def test_pairwise_round_trip(label_studio: LabelStudio, tmp_path: Path, capsys: Any) -> None:
    samples = write_samples(tmp_path / "samples_20261124.jsonl", 40)
    pid = project_id(push(label_studio, samples, "pairwise", "pairwise round trip", capsys))
    assert "0 tasks imported, 39 already there" in push(
        label_studio, samples, "pairwise", "pairwise round trip", capsys)
    sdk = client(label_studio)
    tasks = list(sdk.tasks.list(project=pid, fields="all"))
    lefts = [t.data["meta"]["left"] for t in tasks]
    assert len(tasks) == 39 and {"v1", "v2"} == set(lefts)  # sides randomised
    for i, task in enumerate(tasks):
        meta = task.data["meta"]
        prefer = "v1" if i % 5 == 0 else "v2"  # v2 wins 80%
        side = "left" if meta["left"] == prefer else "right"
        sdk.annotations.create(id=task.id, result=[{
            "from_name": "pw", "to_name": "pw", "type": "pairwise",
            "value": {"selected": side}}])

    labels = tmp_path / "labels.json"
    assert main(["labelstudio", "pull", "--url", label_studio.url, "--token", label_studio.token,
                 "--project", str(pid), "--out", str(labels)]) == 0
    assert "39 pairwise judgements, 0 refused" in capsys.readouterr().out
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(tmp_path / "report")])
    doc = json.loads((tmp_path / "report" / "decision.json").read_text())
    assert (code, doc["decision"]) == (0, "promote")
    assert doc["quality"]["win_share"] == pytest.approx(31 / 39)


def test_mode_mismatch_and_bad_token_are_one_line_errors(
    label_studio: LabelStudio, tmp_path: Path, capsys: Any,
) -> None:
    samples = write_samples(tmp_path / "samples_20261124.jsonl", 3)
    pid = project_id(push(label_studio, samples, "rating", "mismatch", capsys))
    assert main(["labelstudio", "push", "--samples", str(samples), "--mode", "pairwise",
                 "--url", label_studio.url, "--token", label_studio.token,
                 "--project", str(pid)]) == 2
    assert main(["labelstudio", "pull", "--url", label_studio.url, "--token", "0" * 40,
                 "--project", str(pid), "--out", str(tmp_path / "l.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "is not a pairwise project" in err[0]
    assert "refused the token" in err[1]
