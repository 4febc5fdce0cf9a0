"""The gateway actuator against the gateway's real admin API (aiohttp app on loopback, the
chart's routes): weights round-trip, and refusals come back as ActuatorError messages."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from vllm_canary.procs import free_port
from vllm_canary.rollout.actuators import ActuatorError, GatewayActuator

ROUTES = Path(__file__).resolve().parents[2] / "src/vllm_canary/data/routes.yaml"
TOKEN = "test-token"


@pytest.fixture
def admin_url(tmp_path: Path) -> Iterator[str]:
    admin = pytest.importorskip("vllm_canary.gateway.admin")
    store_mod = pytest.importorskip("vllm_canary.gateway.store")
    routes = tmp_path / "routes.yaml"
    shutil.copy(ROUTES, routes)
    store = store_mod.RouteStore(routes)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(admin.admin_app(store, TOKEN))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_weights_round_trip(admin_url: str) -> None:
    act = GatewayActuator(admin_url, TOKEN)
    assert act.get_weights() == {"v1": 90, "v2": 10}
    for v2 in (10, 50, 100, 0):
        assert act.set_weights({"v1": 100 - v2, "v2": v2}) == {"v1": 100 - v2, "v2": v2}
        assert act.get_weights() == {"v1": 100 - v2, "v2": v2}


def test_relative_weights_read_as_percentages(admin_url: str) -> None:
    """Istio >= 1.15 weights are relative: the actuator reads 1:1 as 50/50 and 1:2 as
    33.33/66.67, so the controller compares percentages whatever wrote the route."""
    act = GatewayActuator(admin_url, TOKEN)
    assert act.set_weights({"v1": 1, "v2": 1}) == {"v1": 50, "v2": 50}
    assert act.get_weights() == {"v1": 50, "v2": 50}
    assert act.set_weights({"v1": 1, "v2": 2}) == {"v1": 33.33, "v2": 66.67}
    assert act.set_weights({"v1": 50, "v2": 60}) == {"v1": 45.45, "v2": 54.55}


def test_refusals_are_actuator_errors_with_the_gateways_message(admin_url: str) -> None:
    with pytest.raises(ActuatorError, match="401"):
        GatewayActuator(admin_url, "wrong").get_weights()
    with pytest.raises(ActuatorError, match="total destination weight = 0"):
        GatewayActuator(admin_url, TOKEN).set_weights({"v1": 0, "v2": 0})
    with pytest.raises(ActuatorError, match="unreachable"):
        GatewayActuator(f"http://127.0.0.1:{free_port()}", TOKEN).get_weights()


def test_cli_abort_with_no_controller_running_acts_directly(
        admin_url: str, tmp_path: Path, capsys) -> None:
    from vllm_canary.cli import main
    from vllm_canary.rollout.state import Phase, RolloutState, StateStore

    GatewayActuator(admin_url, TOKEN).set_weights({"v1": 50, "v2": 50})
    store = StateStore(tmp_path / "rollout.json")
    store.save(RolloutState(
        strategy={"steps": [{"setWeight": 50}, {"pause": {}}]},
        target={"actuator": {"kind": "gateway", "admin_url": admin_url, "token": TOKEN},
                "source": {"kind": "scrape", "gateway": None,
                           "servers": {"v2": f"http://127.0.0.1:{free_port()}/metrics"}}},
        phase=Phase.PAUSED, step=1, weights={"v1": 50, "v2": 50}))
    assert main(["rollout", "status", "--state", str(store.path)]) == 0
    assert "Paused" in capsys.readouterr().out
    assert main(["rollout", "abort", "--state", str(store.path)]) == 0
    assert "Aborted" in capsys.readouterr().out
    assert GatewayActuator(admin_url, TOKEN).get_weights() == {"v1": 100, "v2": 0}
    saved = store.load()
    assert saved is not None and saved.phase is Phase.ABORTED
    assert main(["rollout", "abort", "--state", str(store.path)]) == 2  # already over
