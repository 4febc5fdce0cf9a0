"""Log an evaluation to MLflow as a run (optional `mlflow` extra): the rule as params, the
scores, intervals, p-values and metrics as metrics, the decision as a tag, and report.csv,
decision.json and report.html as artifacts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vllm_canary.errors import UserError


def flat_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """The numeric content of decision.json as MLflow metric names (NaN and None left out)."""
    q = doc["quality"]
    out: dict[str, Any] = {
        "exit_code": doc["exit_code"], "refused": doc["refused"],
        "score_diff": q["score_diff"], "rating_pvalue": q["rating_pvalue"],
        "n_pairs": q["n_pairs"], "win_share": q["win_share"],
        "pairwise_pvalue": q["pairwise_pvalue"], "n_decisive": q["n_decisive"],
    }
    for name in ("score_diff_ci", "win_share_ci"):
        if bounds := q[name]:
            out[f"{name}_low"], out[f"{name}_high"] = bounds
    for version, score in q["scores"].items():
        out[f"score_{version}"] = score
    for key, value in q["agreement"].items():
        out[f"agreement_{key}"] = value
    for version, metrics in doc["metrics"].items():
        for key in ("p95_latency_s", "error_rate", "tokens_per_s"):
            out[f"{key}_{version}"] = metrics.get(key)
    return {k: float(v) for k, v in out.items()
            if isinstance(v, int | float) and not math.isnan(float(v))}


def log_run(tracking_uri: str, experiment: str, doc: dict[str, Any], out_dir: Path) -> str:
    """Log one evaluation as an MLflow run; returns the run id."""
    try:
        import mlflow
    except ImportError:
        raise UserError("MLflow is not installed: "
                        "pip install 'vllm-istio-canary[mlflow]'") from None
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"evaluate {doc.get('day', '')}".strip()) as run:
            params = {f"rule_{k}": v for k, v in doc["rule"].items()}
            params.update(day=doc.get("day"), baseline=doc["baseline"],
                          candidate=doc["candidate"])
            mlflow.log_params(params)
            mlflow.log_metrics(flat_metrics(doc))
            mlflow.set_tags({"decision": doc["decision"], "vllm_canary.kind": "quality"})
            for name in ("report.csv", "decision.json", "report.html"):
                if (out_dir / name).is_file():
                    mlflow.log_artifact(str(out_dir / name))
            return str(run.info.run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"MLflow at {tracking_uri}: {exc.message.splitlines()[0]}") from None
