"""Where `rollout start` sends weights and reads metrics: the local stack's state file by
default, flags otherwise, and a one-line error when neither is there."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.rollout.metrics import PrometheusSource, ScrapeSource
from vllm_canary.rollout.targets import (
    add_target_flags,
    build_actuator,
    build_source,
    target_from_args,
)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_target_flags(p)
    return p.parse_args(list(argv))


@pytest.fixture
def stack_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stack.json"
    monkeypatch.setenv("VLLM_CANARY_STATE", str(path))
    return path


def test_defaults_come_from_the_running_local_stack(stack_file: Path) -> None:
    stackstate.save(stackstate.StackState(
        pid=os.getpid(), gateway_url="http://127.0.0.1:8080",
        gateway_metrics_url="http://127.0.0.1:15090/metrics", admin_url="http://127.0.0.1:15000",
        admin_token="tok", routes_file="routes.yaml",
        servers={"v1": stackstate.ServerInfo(url="http://127.0.0.1:8101",
                                             metrics_url="http://127.0.0.1:8001/metrics"),
                 "v2": stackstate.ServerInfo(url="http://127.0.0.1:8102",
                                             metrics_url="http://127.0.0.1:8002/metrics")}))
    target = target_from_args(parse())
    assert target["actuator"] == {"kind": "gateway", "admin_url": "http://127.0.0.1:15000",
                                  "token": "tok"}
    assert target["source"] == {"kind": "scrape", "gateway": "http://127.0.0.1:15090/metrics",
                                "servers": {"v1": "http://127.0.0.1:8001/metrics",
                                            "v2": "http://127.0.0.1:8002/metrics"}}
    assert isinstance(build_source(target), ScrapeSource)
    assert build_actuator(target).describe() == "gateway admin API http://127.0.0.1:15000"


def test_flags_and_missing_stack(stack_file: Path) -> None:
    with pytest.raises(NotRunningError, match="vllm-canary up"):
        target_from_args(parse())
    target = target_from_args(parse("--admin-url", "http://127.0.0.1:1", "--admin-token", "t",
                                    "--prometheus", "http://127.0.0.1:9090"))
    assert isinstance(build_source(target), PrometheusSource)
    target = target_from_args(parse("--admin-url", "http://x", "--scrape", "http://g/metrics",
                                    "v2=http://s2/metrics"))
    assert target["source"]["servers"] == {"v2": "http://s2/metrics"}
    pods = target_from_args(parse("--admin-url", "http://x", "--scrape", "http://g/metrics",
                                  "v2=http://a/metrics", "v2=http://b/metrics"))
    assert pods["source"]["servers"] == {"v2": ["http://a/metrics", "http://b/metrics"]}
    assert build_source(pods).server_urls == {"v2": ["http://a/metrics", "http://b/metrics"]}
    with pytest.raises(UserError, match="no metric source"):
        target_from_args(parse("--admin-url", "http://127.0.0.1:1"))
    source_only = target_from_args(parse("--prometheus", "http://p"), actuator_needed=False)
    assert source_only["actuator"] == {"kind": "none"}
