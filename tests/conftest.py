"""Shared test fixtures. Area-specific fixtures live in tests/fixtures/<area>.py and are
loaded here automatically, so each area owns its own file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (ROOT / "tests" / "fixtures").glob("*.py")
    if p.stem != "__init__"
)


def require(available: bool, what: str, how: str) -> None:
    """Skip when a real component is missing on a user's machine; fail in CI, where
    `make test` installs everything and a skip would hide a broken setup step."""
    if available:
        return
    message = f"{what} is not available: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def free_port() -> int:
    from vllm_canary.procs import free_port as _free_port

    return _free_port()
