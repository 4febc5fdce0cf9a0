"""PrometheusSource's windows without a server: which PromQL it sends (level at the anchor,
then one `increase()` over the whole span since it, summed by version) and what it makes of
the answers (monotone, whole requests, re-anchored every REBASE_S). The real server is in
tests/integration/test_metricsource_churn.py."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_canary.rollout.metrics import prometheus
from vllm_canary.rollout.metrics.prometheus import REBASE_S, PrometheusSource

T0 = 1_700_000_000.0


class FakeProm:
    """Answers every istio_requests_total query with `value` for v2 200s; records queries."""

    def __init__(self) -> None:
        self.value = 0.0
        self.queries: list[str] = []

    def __call__(self, url: str, expr: str, timeout: float) -> list[dict[str, Any]]:
        self.queries.append(expr)
        if "istio_requests_total" not in expr:
            return []
        labels = {"destination_version": "v2", "response_code": "200",
                  "reporter": "destination", "destination_service_name": "vllm-service"}
        return [{"metric": labels, "value": [T0, str(self.value)]}]


@pytest.fixture
def prom(monkeypatch: pytest.MonkeyPatch) -> FakeProm:
    fake = FakeProm()
    monkeypatch.setattr(prometheus, "promql", fake)
    return fake


def test_level_at_the_anchor_then_one_increase_since_it(prom: FakeProm) -> None:
    clock = [T0]
    src = PrometheusSource("http://p", now=lambda: clock[0])
    prom.value = 1000.0
    assert src.snapshot()["v2"].requests == 1000
    level = [q for q in prom.queries if "istio_requests_total" in q]
    assert level == ["sum by (destination_version, reporter, destination_service_name, "
                     "response_code) (istio_requests_total{reporter=\"destination\","
                     f"destination_service_name=\"vllm-service\"}} @ {T0:.3f})"]
    prom.queries.clear()
    clock[0] = T0 + 30
    prom.value = 41.6  # the increase over [T0, T0 + 30 s], extrapolated by Prometheus
    assert src.snapshot()["v2"].requests == 1042  # level + increase, whole requests
    inc = next(q for q in prom.queries if "istio_requests_total" in q)
    assert "increase(istio_requests_total{" in inc and f"[30000ms] @ {T0 + 30:.3f})" in inc
    assert inc.startswith("sum by (destination_version, ")  # rate before sum


def test_a_lower_later_estimate_never_makes_a_negative_window(prom: FakeProm) -> None:
    clock = [T0]
    src = PrometheusSource("http://p", now=lambda: clock[0])
    src.snapshot()
    clock[0] += 10
    prom.value = 52.0
    assert src.snapshot()["v2"].requests == 52
    clock[0] += 10
    prom.value = 50.7  # the extrapolation moved down as the range grew
    assert src.snapshot()["v2"].requests == 52
    clock[0] += 10
    prom.value = 80.0
    assert src.snapshot()["v2"].requests == 80


def test_the_anchor_moves_every_rebase_period_keeping_the_totals(prom: FakeProm) -> None:
    clock = [T0]
    src = PrometheusSource("http://p", now=lambda: clock[0])
    prom.value = 100.0
    src.snapshot()
    clock[0] = T0 + REBASE_S
    prom.value = 500.0
    assert src.snapshot()["v2"].requests == 600
    clock[0] = T0 + REBASE_S + 1
    prom.queries.clear()
    assert src.snapshot()["v2"].requests == 600  # new anchor: the totals become the level
    assert not any("istio_requests_total" in q for q in prom.queries)
    clock[0] = T0 + REBASE_S + 11
    prom.value = 20.0
    assert src.snapshot()["v2"].requests == 620
    assert any("[10000ms]" in q for q in prom.queries)


def test_no_gateway_series_falls_back_to_the_servers_own(monkeypatch) -> None:
    def answer(url: str, expr: str, timeout: float) -> list[dict[str, Any]]:
        if "vllm_requests_total" in expr:
            return [{"metric": {"version": "v2", "status": "503"}, "value": [T0, "7"]}]
        return []

    monkeypatch.setattr(prometheus, "promql", answer)
    snap = PrometheusSource("http://p", now=lambda: T0).snapshot()
    assert (snap["v2"].requests, snap["v2"].errors) == (7, 7)
