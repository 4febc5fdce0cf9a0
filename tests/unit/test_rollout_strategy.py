"""Strategy files: the issue's example works as written; mistakes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_canary.cli import main
from vllm_canary.errors import UserError
from vllm_canary.rollout.strategy import load_strategy, parse_duration, parse_strategy

ISSUE_YAML = """\
steps:
  - setWeight: 10
  - analysis: {duration: 2m}
  - setWeight: 50
  - analysis: {duration: 2m}
  - setWeight: 100
analysis:
  metrics: [error-rate, latency-p95, ttft-p95]
  alpha: 0.01
"""


def test_the_issue_strategy_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(ISSUE_YAML)
    s = load_strategy(path)
    assert [st.kind for st in s.steps] == ["setWeight", "analysis", "setWeight", "analysis",
                                           "setWeight"]
    assert s.steps[1].analysis is not None and s.steps[1].analysis.duration == 120.0
    assert s.analysis.metric_names() == ["error-rate", "latency-p95", "ttft-p95"]
    assert s.analysis.alpha == 0.01


def test_durations() -> None:
    assert [parse_duration(v) for v in ("500ms", "30s", "2m", "1h", 5)] == [0.5, 30, 120, 3600, 5]
    with pytest.raises(ValueError):
        parse_duration("two minutes")


@pytest.mark.parametrize("data, words", [
    ({"steps": []}, "at least one step"),
    ({"steps": [{"setWeight": 120}]}, "setWeight"),
    ({"steps": [{"setWeight": 10, "pause": {}}]}, "exactly one"),
    ({"steps": [{"analysis": {"duration": "soon"}}]}, "bad duration"),
    ({"steps": [{"setWeight": 10}], "analysis": {"metrics": ["p99"]}}, "unknown metric"),
    ({"steps": [{"setWeigth": 10}]}, "setWeigth"),
    (["setWeight"], "mapping"),
    ({"steps": [{"setWeight": 10}], "analysis": {"interval": "0s"}}, "analysis.interval"),
    ({"steps": [{"setWeight": 10}], "stable": "v1", "canary": "v1"}, "both 'v1'"),
    ({"steps": [{"setWeight": 10}], "analysis": {"metrics": [{"name": "x"}]}},
     "'analysis.metrics.0.query': Field required"),
    ({"steps": [{"setWeight": 10}], "analysis": {"metrics": [
        "error-rate", {"name": "error-rate", "query": "x"}]}}, "'error-rate' is listed twice"),
])
def test_mistakes_are_user_errors(data: object, words: str) -> None:
    with pytest.raises(UserError) as err:
        parse_strategy(data)
    assert words in err.value.message and "\n" not in err.value.message
    assert "Value error" not in err.value.message


def test_custom_promql_metric() -> None:
    s = parse_strategy({"steps": [{"setWeight": 10}], "analysis": {"metrics": [
        "error-rate", {"name": "gpu", "query": 'avg(x{version="$version"})', "maxIncrease": 0.2}]}})
    assert s.analysis.metric_names() == ["error-rate", "gpu"]


def test_cli_bad_strategy_is_one_line_and_nonzero(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("steps: [{setWeight: 10, pause: {}}]\n")
    code = main(["rollout", "start", "--strategy", str(path), "--state",
                 str(tmp_path / "s.json"), "--admin-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "exactly one" in err


def test_cli_missing_file_and_no_rollout(tmp_path: Path, capsys) -> None:
    assert main(["rollout", "start", "--strategy", str(tmp_path / "none.yaml")]) == 2
    assert main(["rollout", "status", "--state", str(tmp_path / "s.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "cannot read strategy" in err[0] and "no rollout" in err[1]


@pytest.mark.parametrize("content, words", [
    (b"steps:\n  - setWeight: 10 \xff\n", "not UTF-8"),
    (b"steps: [setWeight: 10\n", "not valid YAML: line"),
    (b"", "'steps': Field required"),
])
def test_unreadable_files_are_one_line(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_strategy(path)
    assert words in err.value.message and "\n" not in err.value.message
