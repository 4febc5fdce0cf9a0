"""The Istio semantics table (docs/istio-semantics.yaml) as test data, shared by the pure-router
run (tests/unit/test_istio_conformance.py) and the gateway-process run
(tests/integration/test_istio_conformance_gateway.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).resolve().parents[1] / "docs" / "istio-semantics.yaml"
DOC = TABLE.with_suffix(".md")
HOST = "vllm-service.default.svc.cluster.local"
DR = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: vllm, namespace: default}}
spec:
  host: {HOST}
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
"""


def table() -> dict[str, Any]:
    return dict(yaml.safe_load(TABLE.read_text(encoding="utf-8")))


def rows() -> list[dict[str, Any]]:
    return list(table()["rows"])


def request_rows() -> list[dict[str, Any]]:
    return [r for r in rows() if "refuse" not in r]


def refuse_rows() -> list[dict[str, Any]]:
    return [r for r in rows() if "refuse" in r]


def http_of(row: dict[str, Any], case: str | None = None) -> list[dict[str, Any]]:
    """The row's http routes; with `case`, every route also needs header `x-case: <case>`, so
    that one VirtualService can hold every row."""
    http = list(yaml.safe_load(row["http"]))
    if case is not None:
        for route in http:
            blocks = route.setdefault("match", [{}])
            for block in blocks:
                block.setdefault("headers", {})["x-case"] = {"exact": case}
    return http


def routes_yaml(http: list[dict[str, Any]], hosts: list[str] | None = None) -> str:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "vllm", "namespace": "default"},
          "spec": {"hosts": hosts or [HOST], "http": http}}
    return yaml.safe_dump(vs, sort_keys=False) + "---\n" + DR


def all_rows_yaml() -> str:
    """One VirtualService with the routes of every accepted row, each behind its x-case."""
    return routes_yaml([route for row in request_rows() for route in http_of(row, row["id"])])


def within(count: int, n: int, pct: float) -> bool:
    """Is `count` of `n` draws within 4 standard deviations of `pct` percent?"""
    p = pct / 100
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9
