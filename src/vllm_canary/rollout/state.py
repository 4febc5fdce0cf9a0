"""The rollout's persisted state, written atomically after every transition so a restarted
controller resumes where it was, and the request file by which `rollout abort|promote|resume`
talk to a running controller."""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from vllm_canary import atomic, stackstate


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    ANALYZING = "Analyzing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ABORTED = "Aborted"

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ABORTED)


class Event(BaseModel):
    at: float
    phase: Phase
    step: int
    message: str


class RolloutState(BaseModel):
    strategy: dict[str, Any]
    target: dict[str, Any]  # how to rebuild the actuator and metric source on restart
    phase: Phase = Phase.PROGRESSING
    step: int = 0  # index of the current step
    step_started: float | None = None  # wall clock when the current step began
    # percent of traffic per version; int when whole (the controller sets whole percentages),
    # a float when read from relative weights such as 1:2
    weights: dict[str, int | float] = Field(default_factory=dict)
    mirror: float = 0.0  # percent mirrored to the canary (setMirror; 0: no dark launch)
    mirror_since: float | None = None  # wall clock when the mirror was set
    shadow: dict[str, Any] = Field(default_factory=dict)  # rollout/shadow.py's evidence
    aborting: bool = False  # abort decided; weights not yet confirmed back on the stable
    message: str = ""
    source_error: str = ""
    canary_down_since: float | None = None  # why the last poll got no metrics ("" when it did)
    analysis: dict[str, Any] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)
    last_snapshot: dict[str, Any] | None = None
    controller_pid: int | None = None
    started: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    events: list[Event] = Field(default_factory=list)


def default_path() -> Path:
    """$VLLM_CANARY_ROLLOUT_STATE, else $XDG_STATE_HOME/vllm-canary/rollout.json."""
    explicit = os.environ.get("VLLM_CANARY_ROLLOUT_STATE")
    if explicit:
        return Path(explicit)
    return stackstate.state_home() / "rollout.json"


class StateStore:
    """One rollout's state file plus its request file (`<state>.request`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.request_path = path.with_name(path.name + ".request")

    def load(self) -> RolloutState | None:
        try:
            return RolloutState.model_validate(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return None

    def save(self, state: RolloutState) -> None:
        state.updated = time.time()
        # 0600: the state may hold the gateway's admin token.
        atomic.write_text(self.path, state.model_dump_json(indent=1), mode=0o600)

    def request(self, action: str) -> None:
        atomic.write_text(self.request_path, json.dumps({"action": action, "at": time.time()}))

    def take_request(self) -> str | None:
        """The pending user request (abort, promote, resume), consumed once."""
        try:
            action = json.loads(self.request_path.read_text()).get("action")
        except (OSError, ValueError):
            return None
        self.request_path.unlink(missing_ok=True)
        return str(action) if action else None
