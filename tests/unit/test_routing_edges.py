"""Pure pieces around the routing core: endpoints and load balancing, outlier ejection,
retry conditions, header edits, the shadow host, weights parsing, histogram quantiles, and the
request as Envoy's router sees it (path normalization, repeated headers, raw query)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from multidict import CIMultiDict

from vllm_canary.errors import UserError
from vllm_canary.gateway.commands import parse_weights
from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.endpoints import Endpoint, Endpoints, load_endpoints_file, parse_upstream
from vllm_canary.gateway.istio import load_file
from vllm_canary.gateway.mirror import shadow_host
from vllm_canary.gateway.proxy import apply_edit, retriable_status
from vllm_canary.gateway.routing import (
    Destination,
    HeaderEdit,
    OutlierDetection,
    Retries,
    match_headers,
    normalize_path,
    normalize_target,
    parse_query,
)
from vllm_canary.gateway.status import quantile
from vllm_canary.gateway.store import default_routes_path

HOST = "vllm-service.default.svc.cluster.local"


def table():  # type: ignore[no-untyped-def]
    return compile_table(load_file(default_routes_path()))


def test_parse_upstream() -> None:
    ep = parse_upstream("v1=http://127.0.0.1:8101/")
    assert (ep.url, dict(ep.labels), ep.workload) == ("http://127.0.0.1:8101", {"version": "v1"},
                                                      "vllm-v1")
    ep = parse_upstream("app=chat,version=v3=http://10.0.0.1:80")
    assert dict(ep.labels) == {"app": "chat", "version": "v3"} and ep.workload == "chat-v3"
    with pytest.raises(UserError, match="SUBSET=URL"):
        parse_upstream("v1:http://x")


def test_endpoints_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("- {url: 'http://a:1', labels: {version: v1}, workload: vllm-v1-abc}\n"
                    "- {url: 'http://b:1', labels: {version: v2}}\n")
    eps = load_endpoints_file(path)
    assert [e.workload for e in eps] == ["vllm-v1-abc", "vllm-v2"]
    path.write_text("- {labels: {version: v1}}\n")
    with pytest.raises(UserError, match="item 1 needs url"):
        load_endpoints_file(path)


def test_subset_selects_by_labels_and_skips_unhealthy() -> None:
    a, b, c = (Endpoint("http://a", {"version": "v1"}), Endpoint("http://b", {"version": "v1"}),
               Endpoint("http://c", {"version": "v2"}))
    eps = Endpoints([a, b, c])
    v1 = eps.select(table(), Destination(HOST, "v1"))
    assert v1 == [a, b]
    assert eps.select(table(), Destination(HOST, None)) == [a, b, c]
    picks = {eps.pick(v1).url for _ in range(4)}
    assert picks == {"http://a", "http://b"}  # round robin
    a.healthy = False
    assert {eps.pick(v1).url for _ in range(4)} == {"http://b"}
    b.healthy = False
    assert eps.pick(v1) is None  # -> 503 no healthy upstream


def test_retry_prefers_another_endpoint() -> None:
    a, b = Endpoint("http://a", {"version": "v1"}), Endpoint("http://b", {"version": "v1"})
    eps = Endpoints([a, b])
    assert eps.pick([a, b], exclude=[a]) is b and eps.pick([a, b], exclude=[a, b]) in (a, b)


def test_least_request_prefers_the_idle_endpoint() -> None:
    a, b = Endpoint("http://a", {"version": "v1"}), Endpoint("http://b", {"version": "v1"})
    a.in_flight = 10
    eps = Endpoints([a, b], rng=random.Random(0))
    assert {eps.pick([a, b], "LEAST_REQUEST").url for _ in range(10)} == {"http://b"}


def test_outlier_ejection_and_its_cap() -> None:
    now = [100.0]
    pods = [Endpoint(f"http://{i}", {"version": "v1"}) for i in range(4)]
    eps = Endpoints(pods, clock=lambda: now[0])
    od = OutlierDetection(consecutive_5xx=2, base_ejection=30.0, max_ejection_percent=25.0)
    eps.report(pods[0], 500, od, pods)
    assert pods[0].ejected_until == 0  # one error is not enough
    eps.report(pods[0], None, od, pods)
    assert pods[0].ejected_until == 130.0
    for _ in range(2):
        eps.report(pods[1], 503, od, pods)
    assert pods[1].ejected_until == 0  # 25% of 4 pods: only one may be out
    assert pods[0] not in eps.available(pods)
    now[0] = 131.0
    assert pods[0] in eps.available(pods)
    eps.report(pods[2], 200, od, pods)
    assert pods[2].consecutive_5xx == 0


@pytest.mark.parametrize(("retry_on", "codes", "status", "expected"), [
    ({"5xx"}, set(), 500, True), ({"5xx"}, set(), 429, False),
    ({"gateway-error"}, set(), 500, False), ({"gateway-error"}, set(), 504, True),
    ({"retriable-status-codes"}, {429}, 429, True), ({"retriable-4xx"}, set(), 409, True),
    ({"connect-failure"}, set(), 503, False),
])
def test_retriable_status(retry_on: set[str], codes: set[int], status: int,
                          expected: bool) -> None:
    policy = Retries(retry_on=frozenset(retry_on), status_codes=frozenset(codes))
    assert retriable_status(policy, status) is expected


def test_header_edit_order_is_remove_set_add() -> None:
    h = CIMultiDict([("X-A", "1"), ("x-b", "1"), ("x-c", "1")])
    apply_edit(h, HeaderEdit(set=(("x-a", "2"),), add=(("x-b", "2"),), remove=("x-c",)))
    assert h.getall("x-a") == ["2"] and h.getall("x-b") == ["1", "2"] and "x-c" not in h


@pytest.mark.parametrize(("authority", "shadow"), [
    ("vllm-service.default.svc.cluster.local", "vllm-service.default.svc.cluster.local-shadow"),
    ("localhost:8080", "localhost-shadow:8080"),
])
def test_shadow_host(authority: str, shadow: str) -> None:
    assert shadow_host(authority) == shadow


def test_parse_weights() -> None:
    assert parse_weights(["v1=75", "v2=25"]) == {"v1": 75, "v2": 25}
    for bad in (["v1"], ["=5"], ["v1=x"]):
        with pytest.raises(UserError, match="SUBSET=WEIGHT"):
            parse_weights(bad)


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {10.0: 50.0, 20.0: 90.0, 50.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == 10.0
    assert quantile(0.9, buckets) == 20.0
    assert quantile(0.7, buckets) == pytest.approx(15.0)
    assert quantile(0.5, {}) is None and quantile(0.5, {float("inf"): 0.0}) is None


@pytest.mark.parametrize(("path", "normalized"), [
    # Envoy normalize_path (Istio's default BASE): chromium's CanonicalizePath, vendored by
    # Envoy in source/common/chromium_url/url_canon_path.cc.
    ("/v1/completions", "/v1/completions"),
    ("/a/../b", "/b"),
    ("/a/./b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/../../x", "/x"),  # never above the root
    ("/a/%2e%2E/b", "/b"),  # an encoded dot is a dot
    ("/a%2e%2E/b", "/a../b"),  # ...but not a segment here
    ("/x%2ex", "/x.x"),
    ("/a/.hidden", "/a/.hidden"),
    ("/a/..b", "/a/..b"),
    ("/a//b", "/a//b"),  # MERGE_SLASHES is not the default
    ("/a%2Fb", "/a%2Fb"),  # escaped slashes KEEP_UNCHANGED
    ("/a%2fb", "/a%2fb"),  # kept exactly, hex case too
    ("/%61%62c", "/abc"),  # unreserved characters are decoded
    ("/~%7e%5F%2D", "/~~_-"),
    ("/a%20b", "/a%20b"),  # others stay encoded
    ("/a b", "/a%20b"),  # and characters that must be escaped are
    ("/\xe9", "/%E9"),  # a raw latin-1 byte
    ("/a\\b", "/a/b"),  # backslash is a separator
    ("/a%zz", "/a%zz"),  # a bad escape passes through
    ("/%%30%30", "/%2500"),  # nested escapes cannot build %00
    ("relative", "/relative"),
    ("", "/"),
])
def test_envoy_path_normalization(path: str, normalized: str) -> None:
    assert normalize_path(path) == normalized


@pytest.mark.parametrize("path", ["/%00", "/a\x00b"])
def test_nul_in_a_path_is_a_400(path: str) -> None:
    assert normalize_path(path) is None and normalize_target(path + "?q=1") is None


def test_target_keeps_its_query_as_sent() -> None:
    assert normalize_target("/a/../v1/%63ompletions?x=%2e.&y") == "/v1/completions?x=%2e.&y"


def test_repeated_headers_are_joined_with_a_comma() -> None:
    got = match_headers([("X-Team", "a"), ("host", "h"), ("x-team", "b"), ("X-TEAM", "c")])
    assert got == {"x-team": "a,b,c", "host": "h"}


def test_query_values_are_raw_and_the_first_wins() -> None:
    assert parse_query("q=a%20b&q=2&p=x+y&flag&e=") == {"q": "a%20b", "p": "x+y", "flag": "",
                                                        "e": ""}
