"""Routing conformance table: one case per Istio rule the gateway executes.

Each case is a VirtualService (YAML, as a user writes it) + a request -> the expected decision.
Weighted and percentage rules are checked statistically with a fixed seed.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.istio import parse_documents
from vllm_canary.gateway.routing import Request, RouteTable, decide

HOST = "vllm-service.default.svc.cluster.local"
DR = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: vllm, namespace: default}}
spec:
  host: {HOST}
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
    - {{name: v3, labels: {{version: v3}}}}
"""


def table(http: str, hosts: str = f"[{HOST}]", extra: str = "") -> RouteTable:
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vllm, namespace: default}}
spec:
  hosts: {hosts}
  http:
{http}
"""
    return compile_table(parse_documents(vs + "---\n" + DR + extra))


def to(subset: str) -> str:
    return f"{{destination: {{host: {HOST}, subset: {subset}}}}}"


def req(
    path: str = "/v1/completions",
    method: str = "POST",
    authority: str = "localhost:8080",
    **headers: str,
) -> Request:
    path, _, qs = path.partition("?")
    query = dict(p.split("=", 1) for p in qs.split("&") if p)
    return Request(
        method, path, authority, {k.replace("_", "-"): v for k, v in headers.items()}, query
    )


def subset_of(t: RouteTable, r: Request, seed: int = 0) -> str | None:
    d = decide(t, r, random.Random(seed))
    return d.destination.subset if d.destination else None


def m(match: str) -> str:
    """Routes: `match` -> v2, everything else -> v1."""
    return f"""    - match: [{match}]
      route: [{to("v2")}]
    - route: [{to("v1")}]"""


# (rule, http routes YAML, request, expected subset or None for "no route")
CASES = [
    ("no match block matches all", f"    - route: [{to('v2')}]", req(), "v2"),
    ("header exact", m("{headers: {x-ab-test: {exact: v2}}}"), req(x_ab_test="v2"), "v2"),
    (
        "header exact is case-sensitive",
        m("{headers: {x-ab-test: {exact: v2}}}"),
        req(x_ab_test="V2"),
        "v1",
    ),
    ("header prefix", m("{headers: {user: {prefix: beta-}}}"), req(user="beta-42"), "v2"),
    (
        "header regex is a full match",
        m('{headers: {user: {regex: "b.t"}}}'),
        req(user="bets"),
        "v1",
    ),
    ("header regex matches", m('{headers: {user: {regex: "b.ts?"}}}'), req(user="bets"), "v2"),
    ("header presence with {}", m("{headers: {x-debug: {}}}"), req(x_debug=""), "v2"),
    (
        "header names are matched lower case",
        m("{headers: {X-AB-Test: {exact: v2}}}"),
        req(x_ab_test="v2"),
        "v2",
    ),
    ("withoutHeaders excludes", m("{withoutHeaders: {x-internal: {}}}"), req(x_internal="1"), "v1"),
    ("withoutHeaders lets others through", m("{withoutHeaders: {x-internal: {}}}"), req(), "v2"),
    ("uri exact", m("{uri: {exact: /v1/chat/completions}}"), req("/v1/chat/completions"), "v2"),
    (
        "uri exact ignores the query string",
        m("{uri: {exact: /v1/models}}"),
        req("/v1/models?x=1", "GET"),
        "v2",
    ),
    ("uri prefix", m("{uri: {prefix: /v1/chat}}"), req("/v1/chat/completions"), "v2"),
    ("uri regex", m('{uri: {regex: "/v1/(chat/)?completions"}}'), req("/v1/completions"), "v2"),
    ("uri is case-sensitive", m("{uri: {prefix: /V1}}"), req("/v1/completions"), "v1"),
    ("ignoreUriCase", m("{uri: {prefix: /V1}, ignoreUriCase: true}"), req("/v1/completions"), "v2"),
    ("method exact", m("{method: {exact: GET}}"), req("/v1/models", "GET"), "v2"),
    (
        "queryParams exact",
        m('{queryParams: {canary: {exact: "yes"}}}'),
        req("/v1/completions?canary=yes"),
        "v2",
    ),
    (
        "queryParams regex",
        m('{queryParams: {user: {regex: "[0-9]+"}}}'),
        req("/v1/completions?user=12a"),
        "v1",
    ),
    (
        "authority prefix",
        m("{authority: {prefix: canary.}}"),
        req(authority="canary.example.com"),
        "v2",
    ),
    (
        "conditions in one block AND",
        m("{uri: {prefix: /v1/chat}, headers: {x-ab-test: {exact: v2}}}"),
        req("/v1/completions", x_ab_test="v2"),
        "v1",
    ),
    (
        "blocks OR",
        m("{uri: {prefix: /v1/chat}}, {headers: {x-ab-test: {exact: v2}}}"),
        req("/v1/completions", x_ab_test="v2"),
        "v2",
    ),
    (
        "first match wins",
        f"""    - match: [{{uri: {{prefix: /v1}}}}]
      route: [{to("v1")}]
    - match: [{{uri: {{prefix: /v1/chat}}}}]
      route: [{to("v2")}]""",
        req("/v1/chat/completions"),
        "v1",
    ),
    (
        "no route matched: 404 (NR)",
        f"""    - match: [{{uri: {{prefix: /v2}}}}]
      route: [{to("v2")}]""",
        req("/v1/completions"),
        None,
    ),
    (
        "a lone destination takes all, weight or not",
        f"""    - route:
        - {{destination: {{host: {HOST}, subset: v2}}, weight: 10}}""",
        req(),
        "v2",
    ),
    (
        "weight 0 never chosen",
        f"""    - route:
        - {{destination: {{host: {HOST}, subset: v1}}, weight: 100}}
        - {{destination: {{host: {HOST}, subset: v2}}, weight: 0}}""",
        req(),
        "v1",
    ),
    (
        "short host name expands in the VS namespace",
        """    - route:
        - {destination: {host: vllm-service, subset: v3}}""",
        req(),
        "v3",
    ),
]


@pytest.mark.parametrize(("rule", "http", "request_", "expected"), CASES, ids=[c[0] for c in CASES])
def test_conformance(rule: str, http: str, request_: Request, expected: str | None) -> None:
    assert subset_of(table(http), request_) == expected


def test_weights_split_statistically() -> None:
    t = table(f"""    - route:
        - {{destination: {{host: {HOST}, subset: v1}}, weight: 90}}
        - {{destination: {{host: {HOST}, subset: v2}}, weight: 10}}""")
    rng = random.Random(7)
    counts = Counter(decide(t, req(), rng).destination.subset for _ in range(10_000))
    assert 850 <= counts["v2"] <= 1150  # 10% +- 1.5 points: ~5 standard deviations
    assert counts["v1"] + counts["v2"] == 10_000


def test_three_way_split() -> None:
    t = table(f"""    - route:
        - {{destination: {{host: {HOST}, subset: v1}}, weight: 50}}
        - {{destination: {{host: {HOST}, subset: v2}}, weight: 30}}
        - {{destination: {{host: {HOST}, subset: v3}}, weight: 20}}""")
    rng = random.Random(3)
    counts = Counter(decide(t, req(), rng).destination.subset for _ in range(10_000))
    assert abs(counts["v1"] - 5000) < 250 and abs(counts["v2"] - 3000) < 250
    assert abs(counts["v3"] - 2000) < 250


def test_header_route_is_100_percent_before_weights() -> None:
    t = table(f"""    - match: [{{headers: {{x-ab-test: {{exact: v2}}}}}}]
      route: [{to("v2")}]
    - route:
        - {{destination: {{host: {HOST}, subset: v1}}, weight: 100}}
        - {{destination: {{host: {HOST}, subset: v2}}, weight: 0}}""")
    rng = random.Random(1)
    assert {decide(t, req(x_ab_test="v2"), rng).destination.subset for _ in range(500)} == {"v2"}


def test_fault_abort_percentage() -> None:
    t = table(f"""    - fault: {{abort: {{httpStatus: 503, percentage: {{value: 25}}}}}}
      route: [{to("v1")}]""")
    rng = random.Random(11)
    aborts = sum(decide(t, req(), rng).abort_status == 503 for _ in range(8_000))
    assert abs(aborts - 2_000) < 200


def test_fault_without_percentage_injects_nothing() -> None:
    """Istio leaves Envoy's percentage at 0 when none is given (istio/istio#36303, #39969):
    neither the delay nor the abort ever fires; the old docs said 100%."""
    t = table(f"""    - fault: {{delay: {{fixedDelay: 1.5s}}, abort: {{httpStatus: 503}}}}
      route: [{to("v1")}]""")
    rng = random.Random(0)
    for _ in range(200):
        d = decide(t, req(), rng)
        assert d.delay is None and d.abort_status is None and d.destination.subset == "v1"


def test_fault_delay_with_percentage_100() -> None:
    t = table(f"""    - fault: {{delay: {{fixedDelay: 1.5s, percentage: {{value: 100}}}}}}
      route: [{to("v1")}]""")
    d = decide(t, req(), random.Random(0))
    assert d.delay == 1.5 and d.abort_status is None and d.destination.subset == "v1"


def test_mirror_percentage() -> None:
    t = table(f"""    - route: [{to("v1")}]
      mirror: {{host: {HOST}, subset: v2}}
      mirrorPercentage: {{value: 40}}""")
    rng = random.Random(5)
    mirrored = sum(bool(decide(t, req(), rng).mirrors) for _ in range(8_000))
    assert abs(mirrored - 3_200) < 250


def test_mirror_without_percentage_copies_everything() -> None:
    t = table(f"""    - route: [{to("v1")}]
      mirrors:
        - {{destination: {{host: {HOST}, subset: v2}}}}
        - {{destination: {{host: {HOST}, subset: v3}}, percentage: {{value: 0}}}}""")
    d = decide(t, req(), random.Random(0))
    assert [m.subset for m in d.mirrors] == ["v2"]


def test_retries_timeout_and_headers_compile() -> None:
    t = table(f"""    - route:
        - destination: {{host: {HOST}, subset: v1}}
          headers: {{response: {{set: {{x-dest: v1}}}}}}
      timeout: 2.5s
      retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "gateway-error,connect-failure,429"}}
      headers:
        request: {{set: {{x-a: "1"}}, add: {{x-b: "2"}}, remove: [X-C]}}""")
    route = t.virtual_hosts[0].routes[0]
    assert route.timeout == 2.5
    assert route.retries.attempts == 3 and route.retries.per_try_timeout == 0.5
    assert route.retries.retry_on == {"gateway-error", "connect-failure", "retriable-status-codes"}
    assert route.retries.status_codes == {429}
    assert route.headers.request.set == (("x-a", "1"),)
    assert route.headers.request.remove == ("x-c",)
    assert route.destinations[0].headers.response.set == (("x-dest", "v1"),)


def test_default_retry_policy_is_istios() -> None:
    route = table(f"    - route: [{to('v1')}]").virtual_hosts[0].routes[0]
    # Istio >= 1.24 no longer retries a 503 answer by default (retry.go, #56023).
    assert route.retries.attempts == 2 and route.retries.status_codes == frozenset()
    assert "connect-failure" in route.retries.retry_on


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (HOST, "v1"),
        ("vllm-service", "v1"),
        ("vllm-service.default:80", "v1"),
        ("other.default.svc.cluster.local", "v2"),
        ("localhost:8080", None),
    ],
)
def test_virtual_host_by_authority(authority: str, expected: str | None) -> None:
    other = f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other, namespace: default}}
spec:
  hosts: ["*.svc.cluster.local"]
  http: [{{route: [{to("v2")}]}}]
"""
    t = table(f"    - route: [{to('v1')}]", extra=other)
    assert subset_of(t, req(authority=authority)) == expected


def test_single_virtual_service_serves_any_authority() -> None:
    assert subset_of(table(f"    - route: [{to('v1')}]"), req(authority="127.0.0.1:8080")) == "v1"


def test_packaged_default_routes() -> None:
    from vllm_canary.gateway.store import default_routes_path

    docs = list(yaml.safe_load_all(Path(default_routes_path()).read_text()))
    t = compile_table(parse_documents(yaml.safe_dump_all(docs)))
    vs = docs[0]["spec"]
    assert vs["hosts"] == [HOST] and "vllm-gateway" in vs["gateways"]
    route_names = [r.name for r in t.virtual_hosts[0].routes]
    assert route_names == ["ab-test", "canary"]
    assert subset_of(t, req(x_ab_test="v2")) == "v2"
    rng = random.Random(2)
    counts = Counter(decide(t, req(), rng).destination.subset for _ in range(2_000))
    assert 130 <= counts["v2"] <= 270


def test_header_regex_runs_in_linear_time_as_envoys_re2() -> None:
    """Envoy runs `regex` with RE2 (safe_regex), which never backtracks. Python's `re` takes
    exponential time on (a+)+$ against a run of a's that does not match: with it, this 50 KB
    header would stall the gateway (and this test would hit its timeout) instead of failing
    the match at once."""
    t = table(f"""
  - match: [{{headers: {{x-user: {{regex: "(a+)+$"}}}}}}]
    route: [{to('v2')}]
  - route: [{to('v1')}]
""")
    assert decide(t, req(x_user="a" * 50_000 + "!"), random.Random(0)).destination.subset == "v1"
    assert decide(t, req(x_user="a" * 50_000), random.Random(0)).destination.subset == "v2"
