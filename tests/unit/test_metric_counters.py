"""SeriesTracker: per-target, per-series increases for direct scraping (counters.py rules)."""

from __future__ import annotations

from vllm_canary.rollout.metrics.counters import SeriesTracker

T0 = 1_000_000.0


def req(value: float, status: str = "200", created: float = T0 - 100) -> list:
    labels = {"version": "v2", "status": status}
    return [("vllm_requests_total", labels, value), ("vllm_requests_created", labels, created)]


def total(out: dict, target: str, status: str = "200") -> float:
    return sum(v for n, lab, v in out[target] if n == "vllm_requests_total"
               and lab["status"] == status)


def test_first_poll_is_the_level_and_increases_add_up() -> None:
    t = SeriesTracker()
    assert total(t.fold({"a": req(500)}, T0), "a") == 500
    assert total(t.fold({"a": req(530)}, T0 + 1), "a") == 530


def test_a_counter_that_went_down_restarted_at_zero() -> None:
    t = SeriesTracker()
    t.fold({"a": req(500)}, T0)
    assert total(t.fold({"a": req(7, created=T0 + 5)}, T0 + 10), "a") == 507


def test_a_restart_already_above_its_old_value_is_caught_by_created() -> None:
    t = SeriesTracker()
    t.fold({"a": req(5)}, T0)
    # 9 > 5 looks like +4 per series, but the process is new: all 9 are new requests.
    assert total(t.fold({"a": req(9, created=T0 + 5)}, T0 + 10), "a") == 14


def test_a_series_missing_after_a_restart_is_not_counted_twice() -> None:
    t = SeriesTracker()
    t.fold({"a": req(100) + req(40, "503")}, T0)
    t.fold({"a": req(3, created=T0 + 5)}, T0 + 10)  # restarted; no 503 yet
    out = t.fold({"a": req(6, created=T0 + 5) + req(2, "503", created=T0 + 8)}, T0 + 11)
    assert (total(out, "a"), total(out, "a", "503")) == (106, 42)


def test_a_departed_target_keeps_what_it_had_and_a_new_one_counts_from_zero() -> None:
    t = SeriesTracker()
    t.fold({"a": req(500), "b": req(300)}, T0)
    t.fold({"a": req(510), "b": req(320)}, T0 + 1)
    out = t.fold({"a": None, "b": req(330), "c": req(4, created=T0 + 1.5)}, T0 + 2)
    assert (total(out, "a"), total(out, "b"), total(out, "c")) == (510, 330, 4)


def test_a_target_unreachable_at_first_contributes_only_what_follows() -> None:
    t = SeriesTracker()
    t.fold({"a": None, "b": req(1)}, T0)
    t.fold({"a": req(10_000), "b": req(1)}, T0 + 1)  # existed long before: history
    out = t.fold({"a": req(10_025), "b": req(1)}, T0 + 2)
    assert total(out, "a") == 25
    assert t.fold({"a": None}, T0 + 3)["a"] == [("vllm_requests_total",
                                                 {"version": "v2", "status": "200"}, 25.0)]


def test_gauges_pass_through_only_from_targets_that_answered() -> None:
    t = SeriesTracker()
    g = [("vllm_canary_gateway_upstream_healthy", {"destination_version": "v2"}, 1.0)]
    assert g[0] in t.fold({"gw": g}, T0)["gw"]
    assert t.fold({"gw": None}, T0 + 1)["gw"] == []
