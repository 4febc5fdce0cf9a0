"""`vllm-canary shadow report`: a day's dark-launch pairs (v1 served vs v2 shadow, same request)
→ `pairs.csv` (one row per pair), `summary.json` (rates with 95% confidence intervals, counts of
pairs and of unpaired requests by reason) and `report.html` (the same, with plots).

Intervals: Wilson score intervals for proportions; for mean differences (latency, TTFT,
tokens) Student's t interval of the paired differences. Unpaired requests are counted by
reason and shown, never dropped silently.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from vllm_canary import atomic
from vllm_canary.dataloop import shadow

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion k/n (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6))


def proportion(flags: list[bool]) -> dict[str, Any]:
    k, n = sum(flags), len(flags)
    return {"rate": round(k / n, 6) if n else None, "ci95": wilson(k, n), "n": n, "count": k}


def mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean, median and t interval of paired differences (None when fewer than 2)."""
    import numpy as np
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"mean": None, "median": None, "ci95": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    ci = None
    if n > 1:
        se = float(arr.std(ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(0.975, n - 1)) * se
        ci = (round(mean - half, 6), round(mean + half, 6))
    return {"mean": round(mean, 6), "median": round(float(np.median(arr)), 6), "ci95": ci,
            "n": n}


def _within(summary: dict[str, Any], lo: float, hi: float) -> dict[str, Any]:
    """A mean's interval clipped to the range the measure can take (similarity is 0..1)."""
    if summary.get("ci95"):
        a, b = summary["ci95"]
        summary["ci95"] = (max(lo, a), min(hi, b))
    return summary


@dataclass
class ShadowReport:
    day: str
    baseline: str
    candidate: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def summarise(joined: shadow.Joined, comparisons: list[shadow.Comparison], day: date,
              baseline: str, candidate: str) -> dict[str, Any]:
    """summary.json: `pairs` and `unpaired` (ints, for pipelines), then each comparison."""
    c = comparisons
    json_pairs = [x for x in c if x.json_asked]
    tool_pairs = [x for x in c if x.tool_calls]
    sims = [x.similarity for x in c]
    mirrored = len(c) + joined.unpaired["v2_error"]
    return {
        "day": day.isoformat(), "baseline": baseline, "candidate": candidate,
        "pairs": len(c),
        "unpaired": sum(joined.unpaired.values()),
        "unpaired_by_reason": dict(joined.unpaired),
        "served_logged": joined.served, "shadow_logged": joined.shadow,
        "exact_match": proportion([x.exact for x in c]),
        "similarity": _within(mean_ci(sims), 0.0, 1.0),
        "length_ratio": mean_ci([x.length_ratio for x in c if x.length_ratio is not None]),
        "finish_reason_changed": proportion([x.finish_changed for x in c]),
        "json_valid": {baseline: proportion([bool(x.json_valid_v1) for x in json_pairs]),
                       candidate: proportion([bool(x.json_valid_v2) for x in json_pairs])},
        "tool_calls": {"same_function": proportion([bool(x.same_function) for x in tool_pairs]),
                       "arguments_valid": proportion([bool(x.tool_args_valid_v2)
                                                      for x in tool_pairs])},
        "refusal": {baseline: proportion([x.refusal_v1 for x in c]),
                    candidate: proportion([x.refusal_v2 for x in c])},
        "latency_diff_s": mean_ci([x.latency_diff_s for x in c if x.latency_diff_s is not None]),
        "ttft_diff_s": mean_ci([x.ttft_diff_s for x in c if x.ttft_diff_s is not None]),
        "tokens_diff": mean_ci([float(x.tokens_diff) for x in c if x.tokens_diff is not None]),
        # Of the mirrored requests whose served answer was fine: how often v2's copy failed.
        "candidate_error_rate": proportion([True] * joined.unpaired["v2_error"]
                                           + [False] * len(c)) if mirrored else
        {"rate": None, "ci95": None, "n": 0, "count": 0},
        "stats": {"files": joined.stats.files, "lines": joined.stats.lines,
                  "invalid": joined.stats.invalid},
    }


def build(log_dirs: list[Path], day: date, baseline: str = "v1",
          candidate: str = "v2") -> ShadowReport:
    joined = shadow.join(log_dirs, day, baseline, candidate)
    comparisons = [shadow.compare(v1, v2) for v1, v2 in joined.pairs]
    rows = []
    for (v1, v2), comp in zip(joined.pairs, comparisons, strict=True):
        row = comp.row()
        row["prompt_source"] = "production (mirrored request)"
        row["v1_text"], row["v2_text"] = v1.get("completion") or "", v2.get("completion") or ""
        rows.append(row)
    return ShadowReport(day.isoformat(), baseline, candidate,
                        summarise(joined, comparisons, day, baseline, candidate), rows)


CSV_COLUMNS = ("request_id", "exact", "similarity", "length_ratio", "finish_changed",
               "json_asked", "json_valid_v1", "json_valid_v2", "tool_calls", "same_function",
               "tool_args_valid_v2", "refusal_v1", "refusal_v2", "latency_diff_s",
               "ttft_diff_s", "tokens_diff", "prompt_source", "v1_text", "v2_text")


def write(report: ShadowReport, out: Path) -> list[Path]:
    """pairs.csv, summary.json and report.html under `out` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, html_path = out / "pairs.csv", out / "summary.json", out / "report.html"
    with atomic.open_text(csv_path) as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in report.rows:
            w.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
    atomic.write_text(json_path, json.dumps(report.summary, indent=1) + "\n")
    atomic.write_text(html_path, render(report))
    return [csv_path, json_path, html_path]


def _fmt(p: dict[str, Any]) -> str:
    if p.get("n", 0) == 0:
        return "— (no data)"
    value = p.get("rate", p.get("mean"))
    ci = p.get("ci95")
    ci_text = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
    return f"{value:.3g}{ci_text} (n={p['n']})"


def _plots(report: ShadowReport) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return {}
    from vllm_canary.dataloop.report import _png

    out: dict[str, str] = {}
    s, rows = report.summary, report.rows
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    labels = ["pairs", *s["unpaired_by_reason"]]
    ax.barh(labels, [s["pairs"], *s["unpaired_by_reason"].values()],
            color=["#1a7f37"] + ["#cf222e"] * len(s["unpaired_by_reason"]))
    ax.invert_yaxis()
    ax.set_xlabel("requests")
    out["Pairs and unpaired requests"] = _png(fig)
    if rows:
        fig = Figure(figsize=(6, 3))
        ax = fig.add_subplot()
        ax.hist([r["similarity"] for r in rows], bins=20, range=(0, 1), color="#0969da")
        ax.set_xlabel(f"similarity of {report.candidate}'s answer to {report.baseline}'s")
        ax.set_ylabel("pairs")
        out["Text similarity per pair"] = _png(fig)
        lat = [r["latency_diff_s"] for r in rows if r["latency_diff_s"] is not None]
        if lat:
            fig = Figure(figsize=(6, 3))
            ax = fig.add_subplot()
            ax.hist(lat, bins=30, color="#57606a")
            ax.axvline(0, color="black", lw=1)
            ax.set_xlabel(f"{report.candidate} - {report.baseline} latency per request (s)")
            ax.set_ylabel("pairs")
            out["Latency difference per pair"] = _png(fig)
    return out


def render(report: ShadowReport) -> str:
    s, b, c = report.summary, report.baseline, report.candidate
    lines = [
        ("exact match", _fmt(s["exact_match"])),
        ("text similarity (mean)", _fmt(s["similarity"])),
        (f"length ratio {c}/{b} (mean)", _fmt(s["length_ratio"])),
        ("finish reason changed", _fmt(s["finish_reason_changed"])),
        (f"JSON valid, {b} (JSON asked)", _fmt(s["json_valid"][b])),
        (f"JSON valid, {c} (JSON asked)", _fmt(s["json_valid"][c])),
        ("tool calls: same function", _fmt(s["tool_calls"]["same_function"])),
        (f"tool calls: {c}'s arguments valid", _fmt(s["tool_calls"]["arguments_valid"])),
        (f"refusals, {b}", _fmt(s["refusal"][b])),
        (f"refusals, {c}", _fmt(s["refusal"][c])),
        (f"latency {c} - {b} (s)", _fmt(s["latency_diff_s"])),
        (f"TTFT {c} - {b} (s)", _fmt(s["ttft_diff_s"])),
        (f"output tokens {c} - {b}", _fmt(s["tokens_diff"])),
        (f"{c} error rate on mirrored requests", _fmt(s["candidate_error_rate"])),
    ]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                    for k, v in lines)
    unpaired = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                       for k, v in s["unpaired_by_reason"].items())
    images = "".join(f"<h3>{html.escape(t)}</h3><img alt=\"{html.escape(t)}\" "
                     f"src=\"data:image/png;base64,{b64}\">" for t, b64 in _plots(report).items())
    worst = sorted(report.rows, key=lambda r: r["similarity"])[:20]
    examples = "".join(
        f"<tr><td>{html.escape(r['request_id'])}</td><td>{r['similarity']:.2f}</td>"
        f"<td>{html.escape(str(r['v1_text'])[:300])}</td>"
        f"<td>{html.escape(str(r['v2_text'])[:300])}</td></tr>" for r in worst)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vllm-canary shadow report {html.escape(report.day)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #d0d7de;padding:.25rem .5rem;
font-size:.9rem;vertical-align:top}}</style></head><body>
<h1>Shadow report {html.escape(report.day)}: {html.escape(c)} (shadow) vs {html.escape(b)}
(served)</h1>
<p>Prompts: real production requests, mirrored to {html.escape(c)}; users got only
{html.escape(b)}'s answers. {s["pairs"]} pairs joined by request id, {s["unpaired"]} requests
unpaired. Intervals are 95% (Wilson for rates, t for mean differences). Refusals are detected by
an explicit <code>refusal</code> field or a refusal-like opening (a heuristic).</p>
<h2>Comparisons</h2><table><tr><th>measure</th><th>value [95% CI]</th></tr>{table}</table>
<h2>Unpaired requests</h2><table><tr><th>reason</th><th>requests</th></tr>{unpaired}</table>
<h2>Plots</h2>{images or "<p>(install the <code>report</code> extra for plots)</p>"}
<h2>Least similar pairs</h2><table><tr><th>request id</th><th>similarity</th>
<th>{html.escape(b)}</th><th>{html.escape(c)}</th></tr>{examples}</table>
</body></html>
"""
