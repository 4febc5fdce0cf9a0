"""The chart's AnalysisTemplate under Argo Rollouts' own rules (issue 10): an empty result is
Inconclusive, never Error (argoproj/argo-rollouts#1466), and a run with no data pauses rather
than passes. Conditions are evaluated by vllm_canary.rollout.argo, a re-implementation of the
expr-lang/expr subset Argo compiles them with, itself checked against expr's documented
examples first."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vllm_canary.analysis.verdict import Verdict
from vllm_canary.errors import UserError
from vllm_canary.rollout.analyzer import Analyzer
from vllm_canary.rollout.argo import ExprError, FloatList, assess, evaluate, evaluate_result
from vllm_canary.rollout.serve import AnalysisService
from vllm_canary.rollout.strategy import AnalysisSpec

# expr-lang/expr: docs/language-definition.md and expr_test.go (TestExpr), expected outputs.
EXPR_EXAMPLES: list[tuple[str, Any]] = [
    ("1", 1), ("true && false || false", False), ('"a" != "b"', True),
    ('"a" != "b" || 1 == 2', True), ("2 + 2 == 4", True), ("2 ** 8", 256.0), ("2 ^ 8", 256.0),
    ('"hello" + " " + "world"', "hello world"), ("1 in [1.5] || 1 not in [1]", False),
    ("-1 not in [1]", True), ('"foobar" contains "bar"', True),
    ('"foobar" startsWith "foo"', True), ('"foobar" endsWith "bar"', True),
    ("len([1, 2, 3])", 3), ('len(["hello", "world"])', 2), ('len("hello, world")', 12),
    ("len('北京')", 2), ("(true ? 0+1 : 2+3) + (false ? -1 : -2)", -1), ('"a" < "b"', True),
    ("1 + 1", 2), ('0 == nil || "str" == nil || true == nil', False),
    ("1 /* one */ + 2 // two", 3), ("2^3 == 8", True), ("1 > 2 < 3", False),
    ("1 < 2 < 3", True), ("1 < 2 < 3 > 4", False), ('"John" in ["John", "Jane"]', True),
]


@pytest.mark.parametrize(("source", "want"), EXPR_EXAMPLES)
def test_the_evaluator_agrees_with_exprs_documented_examples(source: str, want: Any) -> None:
    got = evaluate(source, {})
    assert got == want and type(got) is type(want)


def test_expr_rules_that_decide_a_measurement() -> None:
    array = [1, 2, 3]
    assert (evaluate("array[0]", {"array": array}), evaluate("array[-1]", {"array": array})) \
        == (1, 3)  # negative indices count from the end (language-definition.md)
    with pytest.raises(ExprError, match="index out of range"):
        evaluate("result[0] > 1", {"result": FloatList()})
    assert evaluate("len(result) == 0 || result[0] > 1", {"result": FloatList()}) is True
    with pytest.raises(ExprError, match="mismatched"):  # type-checked before it runs
        evaluate('true || result == "x"', {"result": FloatList()})
    with pytest.raises(ExprError, match="unknown name"):
        evaluate("reslt > 1", {"result": 1.0})
    assert evaluate("1 / 2", {}) == 0.5 and evaluate("7 % 3", {}) == 1


def test_an_unguarded_condition_is_an_error_on_an_empty_result() -> None:
    """The condition the chart used to render: #1466's Error on an empty vector."""
    old = "isNaN(result[0]) || result[0] <= 1.5"
    assert evaluate_result(FloatList(), old) == "Error"
    assert evaluate_result(FloatList([math.nan]), old) == "Successful"  # and NaN passed


@pytest.fixture
def template(render: Any) -> dict[str, Any]:
    rendered = render({"rollouts": {"enabled": True, "analysis": {"web": {"enabled": True}}}})
    return next(m.obj for m in rendered.manifests if m.kind == "AnalysisTemplate")


def phase(metric: dict[str, Any], result: Any) -> str:
    return evaluate_result(result, metric.get("successCondition", ""),
                           metric.get("failureCondition", ""))


def test_prometheus_metrics_empty_and_nan_are_inconclusive(template: dict[str, Any],
                                                           render: Any) -> None:
    values = render({"rollouts": {"enabled": True}}).values["rollouts"]["analysis"]
    limits = {"error-rate-vs-stable": values["maxErrorRateRatio"],
              "p99-latency-vs-stable": values["maxP99LatencyRatio"]}
    for metric in template["spec"]["metrics"]:
        if "prometheus" not in metric["provider"]:
            continue
        limit = limits[metric["name"]]
        assert phase(metric, FloatList()) == "Inconclusive"
        assert phase(metric, FloatList([math.nan])) == "Inconclusive"
        assert phase(metric, FloatList([limit * 0.5])) == "Successful"
        assert phase(metric, FloatList([limit])) == "Successful"
        assert phase(metric, FloatList([limit * 1.01])) == "Failed"
        assert phase(metric, FloatList([math.inf])) == "Failed"
        assert metric["initialDelay"] == values["initialDelay"]


def test_web_metrics_follow_the_verdict(template: dict[str, Any]) -> None:
    web = [m for m in template["spec"]["metrics"] if "web" in m["provider"]]
    assert web
    for metric in web:
        assert [phase(metric, v) for v in ("pass", "fail", "inconclusive")] == [
            "Successful", "Failed", "Inconclusive"]


def test_a_run_with_no_data_pauses_never_passes(template: dict[str, Any]) -> None:
    for metric in template["spec"]["metrics"]:
        count, inconclusive = int(metric["count"]), int(metric["inconclusiveLimit"])
        failure = int(metric["failureLimit"])
        empty = "inconclusive" if "web" in metric["provider"] else FloatList()
        phases: list[str] = []
        for _ in range(count):
            phases.append(phase(metric, empty))
            if assess(phases, count, failure, inconclusive) != "Running":
                break
        assert assess(phases, count, failure, inconclusive) == "Inconclusive", metric["name"]
        # Data arriving after a slow start still decides the run.
        late = [phase(metric, empty)] * inconclusive + ["Successful"] * (count - inconclusive)
        assert assess(late, count, failure, inconclusive) == "Successful"
    # What the limit guards against: inconclusiveLimit >= count lets a data-less run pass.
    assert assess(["Inconclusive"] * 5, count=5, inconclusive_limit=5) == "Successful"


def test_an_inconclusive_limit_not_below_count_is_refused(render: Any) -> None:
    with pytest.raises(UserError, match="inconclusiveLimit"):
        render({"rollouts": {"enabled": True, "analysis": {"count": 3, "inconclusiveLimit": 3}}})


class NoData:
    """A metric source while the canary is not scraped yet: no v2 series, or an outage."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def snapshot(self) -> dict:
        if self.fail:
            raise OSError("connection refused")
        return {}

    def describe(self) -> str:
        return "no data"


@pytest.mark.parametrize("fail", [False, True])
def test_analyze_serve_with_no_data_is_inconclusive_for_argo(template: dict[str, Any],
                                                             fail: bool) -> None:
    spec = AnalysisSpec(metrics=["error-rate", "latency-p95"])
    svc = AnalysisService(lambda: Analyzer(spec, "v1", "v2"), NoData(fail), 3600.0)
    for _ in range(3):
        svc.poll()
    for metric in (m for m in template["spec"]["metrics"] if "web" in m["provider"]):
        name = metric["provider"]["web"]["url"].split("metric=")[1]
        status, body = svc.answer(name)
        assert status == 200 and body["verdict"] == Verdict.INCONCLUSIVE.value
        assert phase(metric, body["verdict"]) == "Inconclusive"
