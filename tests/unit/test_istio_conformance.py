"""The Istio semantics table (docs/istio-semantics.yaml) through the pure router: one case per
row. What Istio's webhook refuses, the loader refuses with the same rule and the field named;
what it accepts is routed as Envoy routes it. The same rows run against a real gateway process
in tests/integration/test_istio_conformance_gateway.py."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tests.istio_table import (
    DOC,
    all_rows_yaml,
    http_of,
    refuse_rows,
    request_rows,
    routes_yaml,
    rows,
    table,
    within,
)
from vllm_canary.gateway import crd
from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.istio import RoutesError, parse_documents
from vllm_canary.gateway.routing import HttpRoute, RouteTable, decide, routing_request

IDS = [r["id"] for r in rows()]


def compiled(row: dict[str, Any]) -> RouteTable:
    objs = parse_documents(routes_yaml(http_of(row), row.get("hosts")))
    found = compile_table(objs)
    schema = crd.find_crds()
    if schema is not None:  # what the loader accepts, Istio's CRD schema accepts too
        crd.validate(objs, schema)
    return found


def send(t: RouteTable, spec: dict[str, Any], rng: random.Random) -> Any:
    headers = [(k, str(v)) for k, v in spec.get("headers", [])]
    routed = routing_request(spec.get("method", "POST"), spec.get("path", "/v1/completions"),
                             "localhost:8080", headers, {k.lower(): v for k, v in headers})
    return None if routed is None else (decide(t, routed[0], rng), routed[1])


def attr(route: HttpRoute, dotted: str) -> Any:
    value: Any = route
    for part in dotted.split("."):
        value = getattr(value, part)
    return sorted(value) if isinstance(value, frozenset) else value


def test_table_is_complete_and_documented() -> None:
    doc = DOC.read_text(encoding="utf-8")
    sources = table()["SOURCES"]
    assert len(IDS) == len(set(IDS))
    for row in rows():
        assert {"id", "field", "istio", "envoy", "source", "http"} <= set(row), row["id"]
        assert row["source"] in sources, row["id"]
        assert f"`{row['id']}`" in doc, f"{row['id']} is not in {DOC.name}"
    compile_table(parse_documents(all_rows_yaml()))  # the gateway-process run loads this


@pytest.mark.parametrize("row", refuse_rows(), ids=[r["id"] for r in refuse_rows()])
def test_refused_as_istio_refuses(row: dict[str, Any]) -> None:
    with pytest.raises(RoutesError) as info:
        compile_table(parse_documents(routes_yaml(http_of(row), row.get("hosts"))))
    assert f"VirtualService default/vllm: {row['refuse']}" in info.value.message


@pytest.mark.parametrize("row", request_rows(), ids=[r["id"] for r in request_rows()])
def test_routed_as_envoy_routes(row: dict[str, Any]) -> None:
    t = compiled(row)
    rng = random.Random(7)
    n = int(row.get("n", 1))
    checked = False
    for item in row.get("requests", []):
        spec = item["send"]
        for _ in range(n if "to" in item else 1):
            got = send(t, spec, rng)
            if item.get("bad_request"):
                assert got is None
                continue
            decision, target = got
            if item.get("no_route"):
                assert decision.route is None
            if "to" in item:
                assert decision.destination is not None
                assert decision.destination.subset == item["to"], spec
            if "upstream_path" in item:
                assert target.partition("?")[0] == item["upstream_path"]
        checked = True
    if "shares" in row:
        counts = Counter(send(t, {}, rng)[0].destination.subset for _ in range(n))
        for subset, pct in row["shares"].items():
            assert within(counts[subset], n, pct), (counts, row["shares"])
        checked = True
    decisions = [send(t, {}, rng)[0] for _ in range(n)]
    if "aborts" in row:
        assert sum(d.abort_status is not None for d in decisions) == row["aborts"]
        if "abort_status" in row:
            assert {d.abort_status for d in decisions} == {row["abort_status"]}
        checked = True
    if "delays" in row:
        delayed = [d.delay for d in decisions if d.delay is not None]
        assert len(delayed) == row["delays"]
        assert all(d == pytest.approx(row["delay_s"]) for d in delayed)
        checked = True
    if "mirrored" in row:
        assert sum(bool(d.mirrors) for d in decisions) == row["mirrored"]
        checked = True
    for dotted, value in row.get("compiled", {}).items():
        assert attr(t.virtual_hosts[0].routes[0], dotted) == value, dotted
        checked = True
    assert checked, f"row {row['id']} has no check the pure router can run"
