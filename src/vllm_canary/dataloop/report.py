"""report.html: the decision, its reasons, the tables, and plots (score distributions, paired
differences, latency) embedded as base64 PNG so the file opens anywhere, offline."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vllm_canary.dataloop.evaluate import Evaluation

COLOURS = {"promote": "#1a7f37", "continue": "#9a6700", "rollback": "#cf222e"}


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(ev: Evaluation) -> dict[str, str]:
    """Title → base64 PNG. Empty when matplotlib (the `report` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return {}
    out: dict[str, str] = {}
    names = list(ev.versions)

    if any(ev.versions[n].scores for n in names):  # a pairwise-only day has no scores
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            scores = [round(s) for s in ev.versions[name].scores]
            counts = [scores.count(k) for k in range(1, 6)]
            ax.bar([k + (i - (len(names) - 1) / 2) * width for k in range(1, 6)], counts, width,
                   label=f"{name} (n={len(scores)})")
        ax.set_xlabel("score (mean over annotators, rounded)")
        ax.set_ylabel("prompts")
        ax.legend()
        out["Score distribution per version"] = _png(fig)

    if ev.diffs:
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        ax.hist(ev.diffs, bins=[x / 2 - 0.25 for x in range(-8, 10)], color="#57606a")
        ax.axvline(0, color="black", lw=1)
        if ev.rating:
            ax.axvspan(*ev.rating.ci, color="#0969da", alpha=0.2, label="CI of mean difference")
            ax.legend()
        ax.set_xlabel(f"{ev.candidate} - {ev.baseline} score per prompt")
        ax.set_ylabel("prompts")
        out["Paired differences"] = _png(fig)

    wtl = ev.pairwise_wtl
    if wtl.n:
        fig = Figure(figsize=(6, 2.4))
        ax = fig.add_subplot()
        outcomes = [f"{ev.candidate} preferred", "tie", f"{ev.baseline} preferred"]
        ax.barh(outcomes, [wtl.wins, wtl.ties, wtl.losses],
                color=["#1a7f37", "#8c959f", "#cf222e"])
        ax.invert_yaxis()
        ax.set_xlabel("prompts (net over annotators)")
        out["Pairwise judgements"] = _png(fig)

    latencies = ev.latencies
    if any(latencies.get(n) for n in names):
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        data = [latencies.get(n) or [math.nan] for n in names]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names)  # `tick_labels=` needs matplotlib ≥ 3.9
        ax.set_ylabel("answer latency in the sample (s)")
        out["Latency of the sampled answers"] = _png(fig)
    return out


def _table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = [c for c in rows[0] if any(r.get(c) for r in rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(ev: Evaluation, doc: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    from vllm_canary.dataloop.evaluate import CSV_COLUMNS, csv_rows

    rows = [{c: r.get(c, "") for c in CSV_COLUMNS} for r in csv_rows(ev)]
    verdict = doc["decision"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in doc["reasons"])
    checks = "".join(f"<tr><td>{html.escape(c['name'])}</td><td>{c['status']}</td>"
                     f"<td>{html.escape(c['detail'])}</td></tr>" for c in doc["checks"])
    agreement = "".join(f"<tr><td>{html.escape(k)}</td><td>{v if v is not None else '—'}</td></tr>"
                        for k, v in doc["quality"]["agreement"].items())
    images = "".join(f"<h3>{html.escape(t)}</h3><img alt=\"{html.escape(t)}\" "
                     f"src=\"data:image/png;base64,{b64}\">" for t, b64 in plots(ev).items())
    refused = "".join(f"<li>{html.escape(r)}</li>" for r in ev.refused[:200])
    from vllm_canary.dataloop.evaluate import PROVENANCE

    sources = "; ".join(f"{n} {html.escape(PROVENANCE.get(k, k))}"
                        for k, n in (doc.get("provenance") or {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vllm-canary quality report {html.escape(ev.day)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #d0d7de;padding:.25rem .5rem;
font-size:.9rem}}.verdict{{color:#fff;background:{COLOURS[verdict]};padding:.2rem .6rem;
border-radius:.3rem}}</style></head><body>
<h1>Quality report {html.escape(ev.day)}:
{html.escape(ev.candidate)} vs {html.escape(ev.baseline)}</h1>
<p>Decision: <span class="verdict">{verdict}</span> (exit code {doc["exit_code"]})</p>
<p>Prompts: {sources or "none"}.</p>
<ul>{reasons}</ul>
<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>detail</th></tr>{checks}</table>
<h2>Versions and comparisons</h2>{_table(rows)}
<h2>Annotator agreement</h2><table>{agreement}</table>
<h2>Plots</h2>{images or "<p>(install the <code>report</code> extra for plots)</p>"}
<h2>Refused annotations ({len(ev.refused)})</h2><ul>{refused}</ul>
</body></html>
"""
