"""What the console reads: Prometheus' HTTP API, the gateway admin API (its token stays here,
server-side), the rollout state file and the data loop's report folders."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


class SourceError(Exception):
    """A backend did not answer, or answered an error; `str()` is one line for the page."""


@dataclass
class Prometheus:
    """Read-only client of Prometheus' HTTP API (https://prometheus.io/docs/prometheus/latest/
    querying/api/): instant queries, range queries and label values."""

    url: str
    session: aiohttp.ClientSession
    timeout: float = 10.0

    async def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        try:
            async with self.session.get(f"{self.url.rstrip('/')}{path}", params=params,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    raise SourceError(f"Prometheus answered HTTP {r.status} that is not "
                                      "JSON") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SourceError(f"Prometheus at {self.url} is not reachable "
                              f"({type(exc).__name__}: {exc})") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            err = body.get("error") if isinstance(body, dict) else body
            raise SourceError(f"Prometheus: {err}")
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query -> Prometheus' `result` list ({metric, value: [t, "v"]})."""
        data = await self._get("/api/v1/query", [("query", promql)])
        return list(data.get("result", []))

    async def query_range(self, promql: str, start: float, end: float,
                          step: float) -> list[dict[str, Any]]:
        """Range query -> the `result` matrix ({metric, values: [[t, "v"], ...]})."""
        data = await self._get("/api/v1/query_range", [
            ("query", promql), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"),
            ("step", f"{step:g}")])
        return list(data.get("result", []))

    async def label_values(self, label: str, match: str | None) -> list[str]:
        params = [("match[]", match)] if match else []
        data = await self._get(f"/api/v1/label/{label}/values", params)
        return sorted(str(v) for v in data)


def instant_by(result: list[dict[str, Any]], label: str) -> dict[str, float | None]:
    """An instant vector keyed by one label; NaN/Inf (e.g. 0/0) become None."""
    out: dict[str, float | None] = {}
    for s in result:
        key = str(s.get("metric", {}).get(label, ""))
        v = float(s["value"][1])
        out[key] = v if math.isfinite(v) else None
    return out


@dataclass
class Admin:
    """The gateway admin API (`GET /routes`, `PUT /weights`) with its bearer token."""

    url: str | None
    token: str | None
    session: aiohttp.ClientSession
    timeout: float = 10.0

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body). The API's own 4xx bodies pass through; no answer is an error."""
        if not self.url:
            raise SourceError("no admin API configured: pass --admin-url (and --admin-token)")
        headers = {"Authorization": f"Bearer {self.token or ''}"}
        try:
            async with self.session.request(
                    method, f"{self.url.rstrip('/')}{path}", json=body, params=params,
                    headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                try:
                    data = await r.json(content_type=None)
                except ValueError:
                    data = {"error": {"message": f"admin API answered HTTP {r.status}",
                                      "type": "api_error", "param": None, "code": None}}
                return r.status, data if isinstance(data, dict) else {"data": data}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SourceError(f"gateway admin API at {self.url} is not reachable "
                              f"({type(exc).__name__}: {exc})") from None

    async def routes(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/routes")
        if status != 200:
            raise SourceError(f"admin API: HTTP {status} "
                              f"{body.get('error', {}).get('message', '')}".strip())
        return body


def mirrors_of(virtualservices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mirror destinations of every http route (`mirror` + `mirrorPercentage`, or `mirrors`),
    as [{route, subset, host, percent}]; Istio mirrors 100% when no percentage is given
    (https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPRoute)."""
    out = []
    for vs in virtualservices:
        for i, http in enumerate(vs.get("spec", {}).get("http", []) or []):
            name = http.get("name") or f"{vs.get('metadata', {}).get('name', '')}[{i}]"
            found = []
            if http.get("mirror"):
                pct = (http.get("mirrorPercentage") or {}).get("value", 100.0)
                found.append((http["mirror"], pct))
            for m in http.get("mirrors", []) or []:
                pct = (m.get("percentage") or {}).get("value", 100.0)
                found.append((m.get("destination", {}), pct))
            for dest, pct in found:
                out.append({"route": name, "subset": dest.get("subset", ""),
                            "host": dest.get("host", ""), "percent": float(pct)})
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def quality_reports(reports: Path) -> list[dict[str, Any]]:
    """Every `<reports>/<day>/decision.json` (and `<reports>/decision.json`), oldest first,
    as {name, decision document, has_html}; unreadable files are listed with an error."""
    found = sorted(reports.glob("*/decision.json")) + sorted(reports.glob("decision.json"))
    out = []
    for path in found:
        doc = read_json(path)
        name = path.parent.name if path.parent != reports else "."
        entry: dict[str, Any] = {"name": name, "has_html": (path.parent / "report.html").is_file(),
                                 "mtime": path.stat().st_mtime}
        if doc is None:
            entry["error"] = f"{path}: not readable JSON"
        else:
            entry["doc"] = doc
        out.append(entry)
    out.sort(key=lambda e: (str(e.get("doc", {}).get("day") or e["name"]), e["mtime"]))
    return out
