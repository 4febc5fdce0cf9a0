"""`evaluate --mlflow`: the evaluation lands as a run in a real local MLflow file store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import require
from tests.unit.test_evaluate import items, planted, rating_export
from vllm_canary.cli import main


def test_evaluation_is_logged_as_an_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    require(importlib.util.find_spec("mlflow") is not None, "MLflow",
            "pip install -e '.[dev]' (the mlflow extra)")
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
    samples, labels = tmp_path / "samples.jsonl", tmp_path / "labels.json"
    samples.write_text("".join(json.dumps(i) + "\n" for i in items(60)))
    labels.write_text(json.dumps(rating_export(planted(3.0, 3.8, 60))))
    store = f"file://{tmp_path / 'mlruns'}"
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(tmp_path / "report"), "--mlflow", store,
                 "--mlflow-experiment", "canary-quality"])
    assert code == 0
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]

    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    doc = json.loads((tmp_path / "report" / "decision.json").read_text())
    assert run.data.tags["decision"] == "promote"
    assert run.data.params["rule_margin"] == "0.25" and run.data.params["candidate"] == "v2"
    assert run.data.metrics["score_diff"] == pytest.approx(doc["quality"]["score_diff"])
    assert run.data.metrics["exit_code"] == 0
    assert "p95_latency_s_v2" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "report.csv", "decision.json", "report.html"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "canary-quality"


def test_missing_store_backend_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    require(importlib.util.find_spec("mlflow") is not None, "MLflow",
            "pip install -e '.[dev]' (the mlflow extra)")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    samples, labels = tmp_path / "samples.jsonl", tmp_path / "labels.json"
    samples.write_text(json.dumps(items(1)[0]) + "\n")
    labels.write_text("[]")
    code = main(["evaluate", "--samples", str(samples), "--labels", str(labels),
                 "--out", str(tmp_path / "r"), "--mlflow", f"file://{tmp_path / 'mlruns'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("vllm-canary evaluate: error: MLflow")
