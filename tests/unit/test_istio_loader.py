"""Loading Istio objects: bad input is a RoutesError naming the object and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vllm_canary.gateway import crd
from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.istio import RoutesError, parse_documents, parse_duration
from vllm_canary.gateway.store import default_routes_path, load_routes

HOST = "vllm-service.default.svc.cluster.local"


def docs() -> list[dict]:
    return list(yaml.safe_load_all(default_routes_path().read_text()))


def compile_docs(objs: list[dict]) -> None:
    compile_table(parse_documents(yaml.safe_dump_all(objs)))


def error_of(mutate) -> str:  # type: ignore[no-untyped-def]
    objs = docs()
    mutate(objs[0]["spec"], objs[1]["spec"])
    with pytest.raises(RoutesError) as info:
        compile_docs(objs)
    return info.value.message


BAD = [
    (
        "unknown field",
        lambda vs, dr: vs["http"][1].update(matchx=[]),
        "VirtualService default/vllm: spec.http[1].matchx: unknown field",
    ),
    (
        "unsupported Istio field",
        lambda vs, dr: vs["http"][1].update(corsPolicy={}),
        "spec.http[1].corsPolicy: is an Istio field the local gateway does not support",
    ),
    (
        "all weights zero (Istio: total destination weight = 0)",
        lambda vs, dr: [d.update(weight=0) for d in vs["http"][1]["route"]],
        "spec.http[1].route: total destination weight = 0",
    ),
    (
        "negative weight (Istio: weight < 0)",
        lambda vs, dr: vs["http"][1]["route"][1].update(weight=-5),
        "spec.http[1].route[1].weight: weight -5 < 0",
    ),
    (
        "weight not a whole number",
        lambda vs, dr: vs["http"][1]["route"][1].update(weight=2.5),
        "spec.http[1].route[1].weight: must be a whole number",
    ),
    (
        "regex that does not compile",
        lambda vs, dr: vs["http"][0]["match"][0]["headers"].update({"x": {"regex": "(a"}}),
        "spec.http[0].match[0].headers.x.regex: does not compile",
    ),
    (
        "regex RE2 cannot run",
        lambda vs, dr: vs["http"][0]["match"][0]["headers"].update({"x": {"regex": "(?=a)b"}}),
        "spec.http[0].match[0].headers.x.regex: does not compile as RE2",
    ),
    (
        "subset missing from the DestinationRule",
        lambda vs, dr: vs["http"][0]["route"][0]["destination"].update(subset="v3"),
        "spec.http[0].route[0].destination.subset: subset 'v3' is not in DestinationRule "
        "default/vllm (has v1, v2)",
    ),
    (
        "two match kinds at once",
        lambda vs, dr: vs["http"][0]["match"][0]["headers"]["x-ab-test"].update(prefix="v"),
        "takes exactly one of exact, prefix, regex",
    ),
    (
        "bad duration",
        lambda vs, dr: vs["http"][1].update(timeout="ten seconds"),
        "spec.http[1].timeout: 'ten seconds' is not a duration",
    ),
    (
        "unknown retry condition",
        lambda vs, dr: vs["http"][1].update(retries={"attempts": 2, "retryOn": "5xx,oops"}),
        "spec.http[1].retries.retryOn: 'oops' is not a valid retryOn policy",
    ),
    (
        "no route list",
        lambda vs, dr: vs["http"][1].pop("route"),
        "spec.http[1].route: needs at least one destination",
    ),
    (
        "DestinationRule field unknown",
        lambda vs, dr: dr["subsets"][0].update(label={}),
        "DestinationRule default/vllm: spec.subsets[0].label: unknown field",
    ),
    (
        "DestinationRule TLS is not honoured locally",
        lambda vs, dr: dr.update(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}}),
        "spec.trafficPolicy.tls: is an Istio field the local gateway does not support",
    ),
    (
        "duplicate subset",
        lambda vs, dr: dr["subsets"].append({"name": "v1", "labels": {}}),
        "subset 'v1' is defined twice",
    ),
    (
        "mirror and mirrors together",
        lambda vs, dr: vs["http"][1].update(mirror={"host": HOST}, mirrors=[]),
        "spec.http[1].mirrors: HTTP route cannot contain both mirror and mirrors",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_routes_name_object_and_field(case: str, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    assert message in error_of(mutate)


def test_malformed_yaml() -> None:
    with pytest.raises(RoutesError, match="not valid YAML"):
        parse_documents("kind: [unclosed", "routes.yaml")


def test_file_without_virtual_service() -> None:
    with pytest.raises(RoutesError, match=r"no networking\.istio\.io VirtualService"):
        parse_documents("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")


def test_other_kinds_in_a_rendered_chart_are_skipped() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n" + yaml.safe_dump_all(docs())
    objs = parse_documents(text)
    assert len(objs.virtualservices) == 1 and len(objs.destinationrules) == 1


def test_missing_file() -> None:
    with pytest.raises(RoutesError, match="cannot read routes file"):
        load_routes(Path("/nonexistent/routes.yaml"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("1h", 3600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


def test_all_supported_fields_compile() -> None:
    objs = docs()
    objs[0]["spec"]["http"][1].update(
        timeout="30s",
        retries={"attempts": 3, "perTryTimeout": "10s", "retryOn": "5xx,reset", "backoff": "50ms"},
        fault={
            "delay": {"fixedDelay": "1s", "percentage": {"value": 1.5}},
            "abort": {"httpStatus": 503, "percentage": {"value": 0.1}},
        },
        mirror={"host": HOST, "subset": "v2"},
        mirrorPercentage={"value": 50.0},
        headers={"request": {"set": {"x-a": "1"}}, "response": {"remove": ["server"]}},
    )
    objs[1]["spec"]["trafficPolicy"] = {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "outlierDetection": {
            "consecutive5xxErrors": 5,
            "interval": "30s",
            "baseEjectionTime": "60s",
            "maxEjectionPercent": 50,
        },
    }
    compile_docs(objs)


def crd_file() -> Path:
    path = crd.find_crds()
    if path is None:
        pytest.skip("Istio CRD schemas not found (set VLLM_CANARY_ISTIO_CRDS)")
    return path


def test_packaged_routes_pass_the_istio_crd_schema() -> None:
    crd.validate(parse_documents(default_routes_path().read_text()), crd_file())


def test_crd_schema_rejects_wrong_types() -> None:
    objs = docs()
    objs[0]["spec"]["http"][1]["route"][0]["weight"] = "ninety"
    with pytest.raises(RoutesError, match=r"spec.http\[1\].route\[0\].weight: .*Istio CRD schema"):
        crd.validate(parse_documents(yaml.safe_dump_all(objs)), crd_file())


def test_crd_schema_is_strict_under_spec() -> None:
    objs = docs()
    objs[1]["spec"]["subsets"][0]["lables"] = {"version": "v1"}
    with pytest.raises(RoutesError, match="'lables' was unexpected"):
        crd.validate(parse_documents(yaml.safe_dump_all(objs)), crd_file())
