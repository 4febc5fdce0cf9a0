"""Where a running local stack (`vllm-canary up`) listens, so that `routes`, `status` and
`rollout` find it with no flags. Written by `up`, removed when it stops."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from vllm_canary import atomic, procs


class ServerInfo(BaseModel):
    url: str  # OpenAI base URL, e.g. http://127.0.0.1:8101
    metrics_url: str  # Prometheus exposition, e.g. http://127.0.0.1:8001/metrics


class StackState(BaseModel):
    pid: int
    gateway_url: str  # http://127.0.0.1:8080
    gateway_metrics_url: str  # http://127.0.0.1:15090/metrics (istio_* series)
    admin_url: str  # http://127.0.0.1:15000
    admin_token: str
    routes_file: str
    servers: dict[str, ServerInfo]  # by version (subset name): v1, v2
    prometheus_url: str | None = None
    log_dir: str | None = None
    console_url: str | None = None  # the web console (`up --console-port`), when running
    # LoRA versions (`up --lora-v2`): adapter version -> the version whose server serves it.
    # Their figures come from that server's metrics (by `version`), not Istio's.
    lora: dict[str, str] = {}


def state_home() -> Path:
    """Where vllm-canary keeps state: $XDG_STATE_HOME/vllm-canary (~/.local/state/...)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "vllm-canary"


def state_path() -> Path:
    """$VLLM_CANARY_STATE, else <state home>/stack.json."""
    explicit = os.environ.get("VLLM_CANARY_STATE")
    if explicit:
        return Path(explicit)
    return state_home() / "stack.json"


def save(state: StackState, path: Path | None = None) -> Path:
    path = path or state_path()
    atomic.write_text(path, state.model_dump_json(indent=2), mode=0o600)  # holds the token
    return path


def load(path: Path | None = None) -> StackState | None:
    """The recorded stack, or None when none is recorded or its process is gone."""
    path = path or state_path()
    try:
        state = StackState.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
    return state if procs.alive(state.pid) else None


def clear(path: Path | None = None) -> None:
    (path or state_path()).unlink(missing_ok=True)
