"""The vLLM-SRE dashboard as the console evaluates it: the chart's Grafana JSON, read at run
time, its panels' PromQL with Grafana's variables substituted, and `query_range` answers
aligned into the column form uPlot draws.

Variables (Grafana's own rules, https://grafana.com/docs/grafana/latest/dashboards/variables/
add-template-variables/#global-variables):
- `$version`: the dashboard's multi-value variable; several values become `(v1|v2)`, "All" its
  `allValue` (`.+`).
- `$__interval`: the query step; `$__range`: the time range, both in seconds.
- `$__rate_interval`: `max($__interval + scrape interval, 4 * scrape interval)`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vllm_canary.errors import UserError

MAX_POINTS = 240  # Grafana's maxDataPoints is the panel width in pixels; ours are ~500 px


def default_dashboard_path() -> Path:
    """The chart's dashboard file: `deploy/helm/vllm-canary/files/vllm-sre.json`, which the
    package links to as `vllm_canary/data/vllm-sre.json` (a symlink in the source tree, a copy
    in a wheel)."""
    return Path(str(resources.files("vllm_canary") / "data" / "vllm-sre.json"))


@dataclass
class Target:
    ref_id: str
    expr: str
    legend: str


@dataclass
class Panel:
    """One drawable panel (`timeseries`), or a `row` header."""

    id: int
    type: str
    title: str
    grid: dict[str, int]
    unit: str = ""
    description: str = ""
    targets: list[Target] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "title": self.title, "gridPos": self.grid,
                "unit": self.unit, "description": self.description,
                "targets": [{"refId": t.ref_id, "expr": t.expr, "legendFormat": t.legend}
                            for t in self.targets]}


@dataclass
class Dashboard:
    title: str
    uid: str
    time_from: str
    time_to: str
    refresh: str
    panels: list[Panel]
    version_query: str  # the `version` variable's label_values(...) query
    all_value: str = ".+"

    def panel(self, panel_id: int) -> Panel | None:
        return next((p for p in self.panels if p.id == panel_id and p.type != "row"), None)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "uid": self.uid, "time": {"from": self.time_from,
                                                               "to": self.time_to},
                "refresh": self.refresh, "panels": [p.to_dict() for p in self.panels]}


def load(path: Path) -> Dashboard:
    """Read a Grafana dashboard JSON file; a missing or malformed file is a UserError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"dashboard {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"dashboard {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("panels"), list):
        raise UserError(f"dashboard {path}: no `panels` list (not a Grafana dashboard?)")
    panels = []
    for raw in doc["panels"]:
        ptype = str(raw.get("type", ""))
        if ptype not in ("row", "timeseries"):
            continue  # other kinds (stat, table, ...) are not drawn by the console
        unit = raw.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        targets = [Target(str(t.get("refId", "A")), str(t["expr"]),
                          str(t.get("legendFormat", "")))
                   for t in raw.get("targets", []) if t.get("expr")]
        panels.append(Panel(int(raw.get("id", len(panels) + 1)), ptype,
                            str(raw.get("title", "")), dict(raw.get("gridPos", {})),
                            str(unit or ""), str(raw.get("description", "")), targets))
    version_query, all_value = "label_values(vllm_requests_total, version)", ".+"
    for var in doc.get("templating", {}).get("list", []):
        if var.get("name") == "version":
            q = var.get("query")
            version_query = str(q.get("query") if isinstance(q, dict) else q or version_query)
            all_value = str(var.get("allValue") or all_value)
    time = doc.get("time", {})
    return Dashboard(str(doc.get("title", "")), str(doc.get("uid", "")),
                     str(time.get("from", "now-1h")), str(time.get("to", "now")),
                     str(doc.get("refresh", "")), panels, version_query, all_value)


_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(metric, label)` -> (metric selector or None, label). Grafana's syntax
    (https://grafana.com/docs/grafana/latest/datasources/prometheus/template-variables/)."""
    m = _LABEL_VALUES.match(query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("match"), m.group("label")


def version_regex(selected: list[str], all_value: str = ".+") -> str:
    """The `$version` substitution: All (or nothing) -> allValue, one -> itself, several ->
    `(a|b)`; values are regex-escaped as Grafana does for a regex matcher."""
    values = [v for v in selected if v and v != "$__all"]
    if not values or "All" in values:
        return all_value
    escaped = [re.escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def step_for(range_s: float, scrape_s: float) -> float:
    """Query step (seconds): the range over MAX_POINTS, never under the scrape interval."""
    return float(max(math.ceil(range_s / MAX_POINTS), math.ceil(scrape_s), 1))


def rate_interval(step_s: float, scrape_s: float) -> str:
    """Grafana's `$__rate_interval`: max($__interval + scrape interval, 4 * scrape interval)."""
    return f"{math.ceil(max(step_s + scrape_s, 4 * scrape_s))}s"


def substitute(expr: str, version: str, step_s: float, range_s: float, scrape_s: float) -> str:
    """Replace Grafana's variables in one PromQL expression (longest names first)."""
    values = {
        "$__rate_interval": rate_interval(step_s, scrape_s),
        "$__interval": f"{int(step_s)}s",
        "$__range": f"{math.ceil(range_s)}s",
        "${version}": version,
        "$version": version,
    }
    for name, value in values.items():
        expr = expr.replace(name, value)
    return expr


_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` replaced by the series' label value."""
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()


def series_version(labels: dict[str, str]) -> str:
    """The version a series belongs to (`version`, else Istio's `destination_version`)."""
    return labels.get("version") or labels.get("destination_version") or ""


def parse_time(text: str, now: float) -> float:
    """Grafana's time syntax: `now`, `now-15m` (s, m, h, d, w) or epoch seconds/milliseconds."""
    text = text.strip()
    m = re.fullmatch(r"now(?:-(\d+)([smhdw]))?", text)
    if m:
        if not m.group(1):
            return now
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - int(m.group(1)) * mult
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use now, now-15m or epoch seconds)") from None
    return value / 1000.0 if value > 1e11 else value


def align(results: list[tuple[Target, list[dict[str, Any]]]], start: float, end: float,
          step: float) -> dict[str, Any]:
    """query_range answers -> uPlot's column data: one x axis (the step grid, epoch seconds)
    and one y column per series (None where a series has no sample), with names/versions."""
    n = int((end - start) // step) + 1
    xs = [start + i * step for i in range(n)]
    series: list[dict[str, Any]] = []
    for target, result in results:
        for s in result:
            labels = {k: str(v) for k, v in s.get("metric", {}).items()}
            ys: list[float | None] = [None] * n
            for t, v in s.get("values", []):
                i = round((float(t) - start) / step)
                if 0 <= i < n:
                    f = float(v)
                    ys[i] = f if math.isfinite(f) else None
            series.append({"name": legend(target.legend, labels), "refId": target.ref_id,
                           "version": series_version(labels), "labels": labels,
                           "points": sum(y is not None for y in ys), "values": ys})
    series.sort(key=lambda s: (s["version"], s["refId"], s["name"]))
    return {"x": xs, "series": series}
