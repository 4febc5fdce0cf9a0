"""`vllm-canary evaluate`: samples + Label Studio annotations (+ Prometheus) → per-version
scores with intervals, paired comparisons, annotator agreement, a decision, and the report
files (report.csv, decision.json, report.html)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_canary import atomic
from vllm_canary.analysis import quality
from vllm_canary.dataloop import metricsjoin, samplefile
from vllm_canary.dataloop.decision import (
    Decision,
    PairwiseEvidence,
    RatingEvidence,
    Rule,
    VersionMetrics,
    decide,
)
from vllm_canary.dataloop.labelstudio import Labels, parse_export
from vllm_canary.errors import UserError


@dataclass
class VersionSummary:
    name: str
    scores: list[float]  # per prompt: mean over its annotators
    n_ratings: int
    mean: float
    ci: tuple[float, float]
    metrics: VersionMetrics
    sample_metrics: VersionMetrics


@dataclass
class Evaluation:
    day: str
    baseline: str
    candidate: str
    versions: dict[str, VersionSummary]
    diffs: list[float]  # candidate - baseline per prompt rated for both
    rating: RatingEvidence | None
    rating_wtl: quality.WinTieLoss
    pairwise: PairwiseEvidence | None
    pairwise_wtl: quality.WinTieLoss
    agreement: dict[str, float]
    labels: Labels
    refused: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # sampled answers, per version


def load_labels(path: Path) -> Labels:
    """A Label Studio JSON export (as `labelstudio pull` writes it, or downloaded by hand)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist: run `vllm-canary labelstudio pull`"
                        " or export JSON from Label Studio") from None
    except ValueError:
        raise UserError(f"labels file {path} is not JSON: export the project as JSON") from None
    if not isinstance(data, list):
        raise UserError(f"labels file {path} is not a Label Studio JSON export (a list of tasks)")
    return parse_export(data)


def sample_day(path: Path, items: list[dict[str, Any]]) -> dt.date:
    """The UTC day the items were sampled from (Prometheus is asked about that day)."""
    text = next((str(it["day"]) for it in items if it.get("day")), None)
    try:
        return dt.date.fromisoformat(text or "")
    except ValueError:
        raise UserError(f"{path} has no valid `day` (YYYY-MM-DD) on its items: --prometheus "
                        "needs it to query that day") from None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarise(
    items: list[dict[str, Any]], labels: Labels, rule: Rule, baseline: str = "v1",
    candidate: str = "v2", prom: dict[str, VersionMetrics] | None = None, seed: int = 0,
) -> Evaluation:
    """All statistics of one evaluation; labels for prompts not in the sample are refused."""
    known = {it["id"] for it in items}
    refused = list(labels.refused)
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in labels.ratings:
        if r.sample_id not in known:
            refused.append(f"rating of unknown sample {r.sample_id} (another day's samples?)")
        elif r.version not in (baseline, candidate):
            refused.append(f"rating of sample {r.sample_id} for unknown version {r.version!r}")
        else:
            per[(r.sample_id, r.version)].append(r.score)
    versions = {}
    for name in (baseline, candidate):
        scores = [_mean(v) for (sid, ver), v in sorted(per.items()) if ver == name]
        sample_m = metricsjoin.from_samples(items, name)
        versions[name] = VersionSummary(
            name, scores, sum(len(v) for (_, ver), v in per.items() if ver == name),
            _mean(scores), quality.bootstrap_ci(scores, rule.confidence, seed=seed),
            (prom or {}).get(name, sample_m), sample_m)
    rated = {name: {sid for sid, v in per if v == name} for name in (baseline, candidate)}
    both = sorted(rated[baseline] & rated[candidate])
    diffs = [_mean(per[(s, candidate)]) - _mean(per[(s, baseline)]) for s in both]
    rating_wtl = quality.win_tie_loss(diffs, rule.confidence)
    rating = None
    if diffs:
        rating = RatingEvidence(len(diffs), _mean(diffs),
                                quality.bootstrap_ci(diffs, rule.confidence, seed=seed),
                                quality.wilcoxon_signed_rank(diffs).pvalue)
    net: dict[str, int] = defaultdict(int)
    votes: dict[str, list[float]] = defaultdict(list)
    for p in labels.preferences:
        if p.sample_id not in known:
            refused.append(f"pairwise judgement of unknown sample {p.sample_id}")
        elif {p.winner, p.loser} != {baseline, candidate}:
            refused.append(f"pairwise judgement of sample {p.sample_id} between unknown versions")
        else:
            net[p.sample_id] += 1 if p.winner == candidate else -1
            votes[p.sample_id].append(1.0 if p.winner == candidate else 0.0)
    pairwise_wtl = quality.win_tie_loss(list(net.values()), rule.confidence)
    pairwise = None
    if net:
        share, ci = pairwise_wtl.decisive_share()
        test = quality.sign_test(pairwise_wtl.wins, pairwise_wtl.losses)
        pairwise = PairwiseEvidence(test.n, share, ci, test.pvalue)
    rating_units = list(per.values())
    agreement = {
        "rating_alpha_interval": quality.krippendorff_alpha(rating_units, "interval"),
        "rating_exact_agreement": quality.exact_agreement(rating_units),
        "rating_units_multi": sum(len(u) >= 2 for u in rating_units),
        "pairwise_alpha_nominal": quality.krippendorff_alpha(list(votes.values()), "nominal"),
        "pairwise_units_multi": sum(len(u) >= 2 for u in votes.values()),
    }
    day = next((str(it.get("day")) for it in items if it.get("day")), "")
    latencies = {name: [float(a["latency_s"]) for it in items
                        if (a := (it.get("answers") or {}).get(name))
                        and a.get("error") is None and a.get("latency_s") is not None]
                 for name in (baseline, candidate)}
    return Evaluation(day, baseline, candidate, versions, diffs, rating, rating_wtl, pairwise,
                      pairwise_wtl, agreement, labels, refused, latencies)


def _num(x: float | int | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return str(round(x, digits)) if isinstance(x, float) else str(x)


CSV_COLUMNS = ["kind", "name", "n", "n_ratings", "mean_score", "ci_low", "ci_high",
               "p95_latency_s", "error_rate", "tokens_per_s", "metrics_source",
               "wins", "ties", "losses", "win_share", "win_share_ci_low", "win_share_ci_high",
               "test", "pvalue"]


def csv_rows(ev: Evaluation) -> list[dict[str, str]]:
    """A row per version, then a row per comparison (rating diffs, pairwise preferences)."""
    rows = []
    for v in ev.versions.values():
        m = v.metrics
        rows.append({"kind": "version", "name": v.name, "n": _num(len(v.scores)),
                     "n_ratings": _num(v.n_ratings), "mean_score": _num(v.mean),
                     "ci_low": _num(v.ci[0]), "ci_high": _num(v.ci[1]),
                     "p95_latency_s": _num(m.p95_latency_s), "error_rate": _num(m.error_rate),
                     "tokens_per_s": _num(m.tokens_per_s), "metrics_source": m.source})
    name = f"{ev.candidate}_vs_{ev.baseline}"
    for kind, wtl, test, pvalue, mean, ci in (
        ("rating", ev.rating_wtl, "wilcoxon_signed_rank",
         ev.rating.pvalue if ev.rating else None, ev.rating.mean_diff if ev.rating else None,
         ev.rating.ci if ev.rating else (None, None)),
        ("pairwise", ev.pairwise_wtl, "sign_test",
         ev.pairwise.pvalue if ev.pairwise else None, None, (None, None)),
    ):
        share, sci = wtl.decisive_share()
        rows.append({"kind": f"comparison_{kind}", "name": name, "n": _num(wtl.n),
                     "mean_score": _num(mean), "ci_low": _num(ci[0]), "ci_high": _num(ci[1]),
                     "wins": _num(wtl.wins), "ties": _num(wtl.ties), "losses": _num(wtl.losses),
                     "win_share": _num(share), "win_share_ci_low": _num(sci[0]),
                     "win_share_ci_high": _num(sci[1]), "test": test, "pvalue": _num(pvalue)})
    return rows


def decision_document(ev: Evaluation, decision: Decision, rule: Rule) -> dict[str, Any]:
    """decision.json: `decision` and `reasons` first (the rollout controller reads them)."""
    doc = decision.to_dict()

    def clean(x: Any) -> Any:
        return None if isinstance(x, float) and math.isnan(x) else x

    doc["quality"] = {
        "score_diff": clean(ev.rating.mean_diff) if ev.rating else None,
        "score_diff_ci": [clean(c) for c in ev.rating.ci] if ev.rating else None,
        "rating_pvalue": ev.rating.pvalue if ev.rating else None,
        "n_pairs": ev.rating.n_pairs if ev.rating else 0,
        "win_share": clean(ev.pairwise.share) if ev.pairwise else None,
        "win_share_ci": [clean(c) for c in ev.pairwise.ci] if ev.pairwise else None,
        "pairwise_pvalue": ev.pairwise.pvalue if ev.pairwise else None,
        "n_decisive": ev.pairwise.n_decisive if ev.pairwise else 0,
        "scores": {v.name: clean(v.mean) for v in ev.versions.values()},
        "agreement": {k: clean(v) for k, v in ev.agreement.items()},
    }
    doc["metrics"] = {v.name: {k: clean(x) for k, x in vars(v.metrics).items()}
                      for v in ev.versions.values()}
    doc.update(day=ev.day, baseline=ev.baseline, candidate=ev.candidate,
               rule=vars(rule), refused=len(ev.refused),
               generated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return doc


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


PROVENANCE = {"shadow": "production prompts; v1 served, v2 answered in shadow (answers as "
                        "logged, not regenerated)",
              "regenerated": "production prompts from the logs; both answers regenerated by "
                             "`sample`"}


def provenance(items: list[dict[str, Any]]) -> dict[str, int]:
    """How many judged prompts came from where: `shadow` (sample --from-shadow) or
    `regenerated` (sample)."""
    out: dict[str, int] = {}
    for item in items:
        kind = (item.get("source") or {}).get("kind") or "regenerated"
        out[kind] = out.get(kind, 0) + 1
    return out


def run_evaluate(
    samples: Path, labels_path: Path, out_dir: Path, rule: Rule, *,
    prometheus: str | None = None, baseline: str = "v1", candidate: str = "v2",
    html: bool = True,
) -> tuple[Evaluation, Decision, dict[str, Any]]:
    """Evaluate and write report.csv, decision.json and (when matplotlib is there) report.html."""
    items = samplefile.load_samples(samples)
    labels = load_labels(labels_path)
    prom = None
    if prometheus and items:
        prom = metricsjoin.from_prometheus(prometheus, sample_day(samples, items),
                                           [baseline, candidate])
    ev = summarise(items, labels, rule, baseline, candidate, prom)
    decision = decide(ev.rating, ev.pairwise, ev.versions[baseline].metrics,
                      ev.versions[candidate].metrics, rule, (baseline, candidate))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "report.csv", csv_rows(ev))
    doc = decision_document(ev, decision, rule)
    doc["provenance"] = provenance(items)
    # Atomic: the rollout controller may read decision.json at any moment.
    atomic.write_text(out_dir / "decision.json", json.dumps(doc, indent=2) + "\n")
    if html:
        from vllm_canary.dataloop import report

        (out_dir / "report.html").write_text(report.render(ev, doc), encoding="utf-8")
    return ev, decision, doc
