"""Dark-launch pairs on crafted request logs: the join by request id, each comparison, the
counts of `shadow report`, `sample --from-shadow`, and how a front recognises a mirror."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from vllm_canary.dataloop import samplefile, shadow, shadowreport
from vllm_canary.server import shadow as front

DAY = dt.date(2026, 11, 30)


def rec(rid: str, version: str, text: str, *, is_shadow: bool = False, status: int = 200,
        **extra: Any) -> dict[str, Any]:
    r = {"ts": "2026-11-30T10:00:00+00:00", "request_id": rid, "version": version,
         "model": "m", "host": "h", "endpoint": "/v1/completions", "status": status,
         "latency_s": 0.2 if version == "v1" else 0.3, "ttft_s": 0.05,
         "prompt_tokens": 3, "completion_tokens": len(text.split()), "opt_out": False,
         "prompt": f"prompt {rid}", "params": {"max_tokens": 16}, "completion": text,
         "finish_reason": "stop", "error": None if status == 200 else "induced"}
    if is_shadow:
        r["shadow"] = True
    r.update(extra)
    return r


def write_logs(d: Path, records: list[dict[str, Any]]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for version in ("v1", "v2"):
        lines = [json.dumps(r) for r in records if r["version"] == version]
        (d / f"requests-20261130-{version}-h.jsonl").write_text("\n".join(lines) + "\n")
    return d


JSON_FMT = {"response_format": {"type": "json_object"}, "max_tokens": 16}


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    records = [
        rec("same", "v1", "Paris is the capital."),
        rec("same", "v2", "Paris is the capital.", is_shadow=True),
        rec("diff", "v1", "The answer is forty two."),
        rec("diff", "v2", "Bananas grow on plants in warm places.", is_shadow=True),
        rec("json", "v1", '{"a": 1}', params=JSON_FMT),
        rec("json", "v2", '{"a": 1', is_shadow=True, params=JSON_FMT),
        rec("refuse", "v1", "Here is a poem about the sea."),
        rec("refuse", "v2", "I'm sorry, but I can't help with that.", is_shadow=True),
        rec("v2err", "v1", "fine"),
        rec("v2err", "v2", "", is_shadow=True, status=500),
        rec("dropped", "v1", "nobody mirrored me"),
        rec("orphan", "v2", "v1 never logged this", is_shadow=True),
    ]
    return write_logs(tmp_path / "logs", records)


def test_pairs_and_unpaired_are_counted_by_reason(crafted: Path) -> None:
    joined = shadow.join([crafted], DAY)
    assert sorted(v1["request_id"] for v1, _ in joined.pairs) == ["diff", "json", "refuse",
                                                                   "same"]
    assert joined.unpaired == {"v2_error": 1, "v1_error": 0, "opted_out": 0, "no_shadow": 1,
                               "shadow_only": 1}


def test_comparisons_on_crafted_pairs(crafted: Path) -> None:
    by_id = {v1["request_id"]: shadow.compare(v1, v2) for v1, v2 in shadow.join([crafted],
                                                                                  DAY).pairs}
    same, diff, js, refuse = by_id["same"], by_id["diff"], by_id["json"], by_id["refuse"]
    assert same.exact and same.similarity == 1.0 and same.length_ratio == 1.0
    assert not diff.exact and diff.similarity < 0.3
    assert (js.json_asked, js.json_valid_v1, js.json_valid_v2) == (True, True, False)
    assert same.json_asked is False and same.json_valid_v2 is None
    assert (refuse.refusal_v1, refuse.refusal_v2) == (False, True)
    assert same.latency_diff_s == pytest.approx(0.1)
    assert not same.finish_changed


def test_tool_calls_same_function_and_schema() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    v1 = rec("t", "v1", "", tools=tools,
             tool_calls=[{"name": "weather", "arguments": '{"city": "Oslo"}'}])
    good = rec("t", "v2", "", is_shadow=True, tools=tools,
               tool_calls=[{"name": "weather", "arguments": '{"city": "Rome"}'}])
    bad = rec("t", "v2", "", is_shadow=True, tools=tools,
              tool_calls=[{"name": "weather", "arguments": '{"town": 3}'}])
    other = rec("t", "v2", "", is_shadow=True, tools=tools,
                tool_calls=[{"name": "time", "arguments": "{}"}])
    assert (shadow.compare(v1, good).same_function, shadow.compare(v1, good).tool_args_valid_v2) \
        == (True, True)
    assert shadow.compare(v1, bad).tool_args_valid_v2 is False
    assert shadow.compare(v1, other).same_function is False


def test_report_files_state_pairs_and_unpaired(crafted: Path, tmp_path: Path) -> None:
    report = shadowreport.build([crafted], DAY)
    paths = shadowreport.write(report, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["pairs"], summary["unpaired"]) == (4, 3)
    assert summary["exact_match"]["count"] == 1 and summary["exact_match"]["n"] == 4
    lo, hi = summary["exact_match"]["ci95"]
    assert lo < 0.25 < hi
    assert summary["json_valid"]["v2"] == {"rate": 0.0, "ci95": summary["json_valid"]["v2"][
        "ci95"], "n": 1, "count": 0}
    assert summary["refusal"]["v2"]["count"] == 1 and summary["refusal"]["v1"]["count"] == 0
    # 5 mirrored requests with a good served answer; one of v2's copies failed.
    assert summary["candidate_error_rate"]["rate"] == pytest.approx(0.2)
    csv_lines = (tmp_path / "out" / "pairs.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4
    page = paths[2].read_text()
    assert "shadow_only" in page and "4 pairs" in page


def test_sample_from_shadow_takes_logged_answers(crafted: Path, tmp_path: Path) -> None:
    out = tmp_path / "ann"
    res = shadow.sample_pairs([crafted], DAY, 3, out, seed=1)
    items = samplefile.read_items(res.path)
    assert len(items) == 3
    for item in items:
        assert item["source"]["kind"] == "shadow"
        assert set(item["answers"]) == {"v1", "v2"}
        assert item["answers"]["v2"]["text"] and item["answers"]["v2"]["attempts"] == 0
    again = shadow.sample_pairs([crafted], DAY, 3, out, seed=1)  # idempotent
    assert samplefile.read_items(again.path) == items
    more = samplefile.read_items(shadow.sample_pairs([crafted], DAY, 10, out, seed=1).path)
    assert len(more) == 4 and more[:3] == items  # only the four good pairs; a superset


@pytest.mark.parametrize(("host", "expected"), [
    ("vllm-service.default.svc.cluster.local-shadow", True),
    ("vllm-service-shadow:8080", True),
    ("[::1]-shadow:8080", True),
    ("vllm-service:8080", False),
    ("shadow-service", False),
    ("", False),
])
def test_front_recognises_envoy_shadow_host(host: str, expected: bool) -> None:
    assert front.is_shadow({"host": host}) is expected


def test_shadow_host_is_envoys_rule() -> None:
    assert front.shadow_host("svc:8080") == "svc-shadow:8080"
    assert front.shadow_host("svc") == "svc-shadow"
    assert front.shadow_host("[::1]") == "[::1]-shadow"
    assert front.shadow_host("[::1]:80") == "[::1]-shadow:80"


def test_loop_daily_from_shadow_needs_no_urls(crafted: Path, tmp_path: Path, monkeypatch,
                                               capsys) -> None:
    from vllm_canary.cli import main

    monkeypatch.delenv("VLLM_CANARY_LABELSTUDIO_URL", raising=False)
    out = tmp_path / "nightly"
    assert main(["loop", "daily", "--from-shadow", "--logs", str(crafted), "--date",
                 "2026-11-30", "--out", str(out)]) == 0
    assert "4 items" in capsys.readouterr().out
    assert all(i["source"]["kind"] == "shadow"
               for i in samplefile.read_items(out / "samples_20261130.jsonl"))


@pytest.mark.parametrize(("v2_text", "minimum", "verdict"), [
    ("the same words here", 0.9, "pass"),
    ("entirely other output", 0.5, "fail"),
])
def test_agreement_metric_against_its_threshold(tmp_path: Path, v2_text: str, minimum: float,
                                                verdict: str) -> None:
    from vllm_canary.rollout.shadow import agreement_result
    from vllm_canary.rollout.strategy import AnalysisSpec

    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%d")
    records = []
    for i in range(25):
        records += [rec(f"r{i}", "v1", "the same words here", ts=now.isoformat()),
                    rec(f"r{i}", "v2", v2_text, is_shadow=True, ts=now.isoformat())]
    d = tmp_path / "logs"
    d.mkdir()
    for version in ("v1", "v2"):
        (d / f"requests-{stamp}-{version}-h.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records if r["version"] == version))
    spec = AnalysisSpec(metrics=["agreement"], logs=[str(d)], minAgreement=minimum,
                        minSamples=20)
    result = agreement_result(spec, "v1", "v2", since=now.timestamp() - 60)
    assert str(result.verdict) == verdict and result.samples == 25
    later = agreement_result(spec, "v1", "v2", since=now.timestamp() + 60)
    assert str(later.verdict) == "inconclusive"  # no pair since the dark launch began
