"""`evaluate` on planted data: the right decision and exit code, statistics equal to scipy's,
refused annotations reported, and the report files a user opens."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from vllm_canary.cli import main
from vllm_canary.dataloop import labelstudio
from vllm_canary.dataloop.decision import Rule, VersionMetrics, decide

EXIT = {"promote": 0, "continue": 3, "rollback": 4}


def items(n: int, latency: dict[str, float] | None = None) -> list[dict[str, object]]:
    latency = latency or {"v1": 0.2, "v2": 0.2}
    return [{"id": f"s{i:03d}", "day": "2026-11-24", "endpoint": "/v1/completions",
             "prompt": f"question {i}", "params": {},
             "answers": {v: {"text": f"{v} answer {i}", "latency_s": latency[v], "error": None,
                             "completion_tokens": 10} for v in ("v1", "v2")}}
            for i in range(n)]


def rating_export(scores: dict[str, list[int]], annotator: int = 1) -> list[dict[str, object]]:
    """A Label Studio JSON export of the rating tasks, one annotation per task."""
    tasks: list[dict[str, object]] = []
    for version, values in scores.items():
        for i, score in enumerate(values):
            tasks.append({"id": len(tasks) + 1, "data": {
                "prompt": f"question {i}", "answer": "...",
                "meta": {"sample_id": f"s{i:03d}", "version": version, "mode": "rating"}},
                "annotations": [{"id": len(tasks) + 1, "completed_by": annotator,
                                 "was_cancelled": False, "result": [
                                     {"from_name": "score", "to_name": "answer", "type": "rating",
                                      "value": {"rating": score}}]}]})
    return tasks


def pairwise_export(v2_wins: list[bool]) -> list[dict[str, object]]:
    tasks: list[dict[str, object]] = []
    for i, v2_won in enumerate(v2_wins):
        left, right = ("v1", "v2") if i % 2 else ("v2", "v1")
        selected = "left" if (left == "v2") == v2_won else "right"
        tasks.append({"id": i + 1, "data": {
            "prompt": f"question {i}", "answer_a": "...", "answer_b": "...",
            "meta": {"sample_id": f"s{i:03d}", "left": left, "right": right}},
            "annotations": [{"id": i + 1, "completed_by": 1, "result": [
                {"from_name": "pw", "to_name": "pw", "type": "pairwise",
                 "value": {"selected": selected}}]}]})
    return tasks


def planted(mean_v1: float, mean_v2: float, n: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    base = rng.normal(mean_v1, 0.8, n)
    cand = base + (mean_v2 - mean_v1) + rng.normal(0, 0.6, n)
    clip = lambda x: [int(v) for v in np.clip(np.rint(x), 1, 5)]  # noqa: E731
    return {"v1": clip(base), "v2": clip(cand)}


def run(tmp: Path, sample_items: list[dict[str, object]], export: list[dict[str, object]],
        *extra: str) -> tuple[int, dict[str, object]]:
    samples, labels, out = tmp / "samples.jsonl", tmp / "labels.json", tmp / "report"
    samples.write_text("".join(json.dumps(i) + "\n" for i in sample_items))
    labels.write_text(json.dumps(export))
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(out), *extra])
    return code, json.loads((out / "decision.json").read_text())


def test_v2_truly_better_promotes(tmp_path: Path) -> None:
    code, doc = run(tmp_path, items(80), rating_export(planted(3.0, 3.8, 80)))
    assert (code, doc["decision"]) == (0, "promote")
    assert doc["quality"]["score_diff"] > 0.5 and doc["exit_code"] == 0
    assert any("non-inferior" in r for r in doc["reasons"])


def test_v2_worse_rolls_back(tmp_path: Path) -> None:
    code, doc = run(tmp_path, items(80), rating_export(planted(3.8, 2.9, 80)))
    assert (code, doc["decision"]) == (4, "rollback")
    assert any("worse than the margin" in r for r in doc["reasons"])


def test_equal_but_uncertain_continues(tmp_path: Path) -> None:
    scores = planted(3.0, 3.0, 30, seed=3)
    code, doc = run(tmp_path, items(30), rating_export(scores), "--margin", "0.1")
    assert (code, doc["decision"]) == (3, "continue")
    assert any("interval still reaches" in r for r in doc["reasons"])


def test_too_few_labels_continue(tmp_path: Path) -> None:
    code, doc = run(tmp_path, items(10), rating_export({"v1": [1] * 10, "v2": [5] * 10}))
    assert (code, doc["decision"]) == (3, "continue")
    assert any("need ≥ 20" in r for r in doc["reasons"])


def test_no_labels_continue(tmp_path: Path) -> None:
    code, doc = run(tmp_path, items(10), [])
    assert (code, doc["decision"]) == (3, "continue")
    assert doc["reasons"] == ["no valid labels yet"]


def test_pairwise_planted(tmp_path: Path) -> None:
    better = [i % 4 != 0 for i in range(60)]  # v2 wins 75%
    code, doc = run(tmp_path, items(60), pairwise_export(better))
    assert (code, doc["decision"]) == (0, "promote")
    assert doc["quality"]["win_share"] == pytest.approx(0.75)
    assert doc["quality"]["pairwise_pvalue"] == pytest.approx(stats.binomtest(45, 60).pvalue)
    worse = tmp_path / "worse"
    worse.mkdir()
    code, doc = run(worse, items(60), pairwise_export([i % 4 == 0 for i in range(60)]))
    assert (code, doc["decision"]) == (4, "rollback")


def test_latency_budget_breach_rolls_back_despite_better_quality(tmp_path: Path) -> None:
    code, doc = run(tmp_path, items(80, {"v1": 0.5, "v2": 1.5}),
                    rating_export(planted(3.0, 3.8, 80)))
    assert (code, doc["decision"]) == (4, "rollback")
    assert any(r.startswith("p95 latency v2 1.500s") for r in doc["reasons"])


def test_statistics_in_the_report_equal_scipy(tmp_path: Path) -> None:
    scores = planted(3.0, 3.4, 60, seed=5)
    _, doc = run(tmp_path, items(60), rating_export(scores))
    diffs = np.array(scores["v2"]) - np.array(scores["v1"])
    ref = stats.wilcoxon(diffs, zero_method="wilcox", method="approx")
    assert doc["quality"]["rating_pvalue"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert doc["quality"]["score_diff"] == pytest.approx(diffs.mean())
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").read_text().splitlines()))
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("version", "v1"), ("version", "v2"), ("comparison_rating", "v2_vs_v1"),
        ("comparison_pairwise", "v2_vs_v1")]
    assert float(rows[0]["mean_score"]) == pytest.approx(np.mean(scores["v1"]), abs=1e-4)
    assert int(rows[2]["wins"]) == int((diffs > 0).sum())
    assert int(rows[2]["ties"]) == int((diffs == 0).sum())
    assert float(rows[0]["p95_latency_s"]) == pytest.approx(0.2)
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert f">{doc['decision']}<" in html


def test_invalid_annotations_are_refused_and_reported(tmp_path: Path, capsys) -> None:
    export = rating_export({"v1": [3, 9, 4], "v2": [4, 0, 5]})
    export.append({"id": 99, "data": {"prompt": "x"}, "annotations": [
        {"id": 99, "result": [{"type": "rating", "value": {"rating": 3}}]}]})
    export.append({"id": 100, "data": {"meta": {"sample_id": "s999", "version": "v1"}},
                   "annotations": [{"id": 100, "result": [
                       {"type": "rating", "value": {"rating": 3}}]}]})
    export[0]["annotations"].append({"id": 7, "was_cancelled": True, "result": []})  # type: ignore[union-attr]
    code, doc = run(tmp_path, items(3), export)
    err = capsys.readouterr().err
    assert doc["refused"] == 4
    assert "rating 9 is not an integer 1..5" in err and "rating 0 is not" in err
    assert "no data.meta.sample_id" in err and "unknown sample s999" in err
    assert code == 3


def test_agreement_between_annotators() -> None:
    first = rating_export({"v1": [3, 4, 2, 5], "v2": [4, 4, 3, 5]}, annotator=1)
    second = rating_export({"v1": [3, 4, 3, 5], "v2": [4, 5, 3, 5]}, annotator=2)
    for a, b in zip(first, second, strict=True):
        a["annotations"] += b["annotations"]  # type: ignore[operator]
    labels = labelstudio.parse_export(first)
    assert len(labels.ratings) == 16 and {r.annotator for r in labels.ratings} == {"1", "2"}
    from vllm_canary.dataloop.evaluate import summarise

    ev = summarise(items(4), labels, Rule())
    assert ev.agreement["rating_units_multi"] == 8
    assert 0.5 < ev.agreement["rating_alpha_interval"] < 1.0
    assert ev.agreement["rating_exact_agreement"] == pytest.approx(6 / 8)


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "s.jsonl").write_text(json.dumps(items(1)[0]) + "\n")
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["evaluate", "--samples", str(tmp_path / "missing.jsonl"), "--labels", "x",
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", "--samples", str(tmp_path / "s.jsonl"), "--labels",
                 str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vllm-canary evaluate: error:") for line in err)


def test_decision_rule_without_quality_signal_but_failing_errors() -> None:
    d = decide(None, None, VersionMetrics(error_rate=0.0), VersionMetrics(error_rate=0.2), Rule())
    assert d.decision == "rollback" and d.exit_code == EXIT["rollback"]
    assert d.reasons[0].startswith("error rate v2 20.00%")


def test_error_budget_judges_small_samples_by_their_lower_bound() -> None:
    base = VersionMetrics(error_rate=0.0, requests=30)
    one_slip = decide(None, None, base, VersionMetrics(error_rate=1 / 30, requests=30), Rule())
    broken = decide(None, None, base, VersionMetrics(error_rate=10 / 30, requests=30), Rule())
    assert [c.status for c in one_slip.checks if c.name == "errors"] == ["pass"]
    assert broken.decision == "rollback"


@pytest.mark.parametrize("extra", [
    ["--baseline", "v2"],  # v2 against itself would always "promote"
    ["--margin", "-1"], ["--win-margin", "0.5"], ["--min-pairs", "0"],
    ["--latency-budget", "-0.1"], ["--error-budget", "-0.01"],
])
def test_bad_rule_flags_are_one_line_errors(tmp_path: Path, capsys, extra: list[str]) -> None:
    (tmp_path / "s.jsonl").write_text(json.dumps(items(1)[0]) + "\n")
    (tmp_path / "l.json").write_text("[]")
    assert main(["evaluate", "--samples", str(tmp_path / "s.jsonl"), "--labels",
                 str(tmp_path / "l.json"), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vllm-canary evaluate: error: --"), err
    assert not (tmp_path / "o").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "s.jsonl").write_text(json.dumps(items(1)[0]) + "\n")
    (tmp_path / "l.json").write_text("[]")
    blocked = tmp_path / "s.jsonl" / "report"  # below a file
    assert main(["evaluate", "--samples", str(tmp_path / "s.jsonl"), "--labels",
                 str(tmp_path / "l.json"), "--out", str(blocked)]) == 2
    assert main(["labelstudio", "export", "--samples", str(tmp_path / "s.jsonl"),
                 "--out", str(blocked)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("cannot create the --out folder" in line for line in err), err


def test_reasons_name_the_versions_compared() -> None:
    # They used to say "v2 ... v1" whatever --baseline/--candidate named.
    d = decide(None, None, VersionMetrics(p95_latency_s=0.1, error_rate=0.0),
               VersionMetrics(p95_latency_s=0.5, error_rate=0.2), Rule(), ("v2", "v3"))
    assert d.decision == "rollback"
    assert [r.split(" (")[0] for r in d.reasons] == ["p95 latency v3 0.500s vs v2 0.100s",
                                                    "error rate v3 20.00% vs v2 0.00%"]


def test_a_pairwise_only_report_plots_the_judgements_not_empty_scores(tmp_path: Path) -> None:
    run(tmp_path, items(30), pairwise_export([i % 3 != 0 for i in range(30)]))
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h3>Pairwise judgements</h3>" in html
    assert "Score distribution" not in html  # there are no scores to plot
    assert html.count("data:image/png;base64,") == 2  # judgements and latency


def test_prometheus_join_needs_the_samples_day(tmp_path: Path, capsys) -> None:
    # A hand-edited samples file without a usable day was a KeyError/ValueError traceback.
    item = {k: v for k, v in items(1)[0].items() if k != "day"}
    (tmp_path / "s.jsonl").write_text(json.dumps(item) + "\n")
    (tmp_path / "l.json").write_text("[]")
    assert main(["evaluate", "--samples", str(tmp_path / "s.jsonl"), "--labels",
                 str(tmp_path / "l.json"), "--out", str(tmp_path / "o"),
                 "--prometheus", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no valid `day`" in err[0], err
