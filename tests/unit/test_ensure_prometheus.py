"""`make up`'s Prometheus step (scripts/ensure-prometheus.sh) with stand-ins for `id` and
`apt-get` on PATH: root installs the Debian package, anyone else gets one line saying how,
and the stack starts either way (exit 0)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "ensure-prometheus.sh"


def _bin(tmp: Path, uid: int, prometheus: bool = False) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "id").write_text(f"#!/bin/bash\necho {uid}\n")
    (bindir / "apt-get").write_text(f'#!/bin/bash\necho "$@" >> {tmp}/apt.log\n')
    if prometheus:
        (bindir / "prometheus").write_text("#!/bin/bash\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir


def _run(bindir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT)], env={"PATH": str(bindir)},
                          capture_output=True, text=True, timeout=30)


def test_root_installs_the_debian_package(tmp_path: Path) -> None:
    out = _run(_bin(tmp_path, 0))
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].startswith("install -y") and calls[1].endswith("prometheus")


@pytest.mark.parametrize("present", [False, True])
def test_others_get_one_line_and_nothing_runs(tmp_path: Path, present: bool) -> None:
    out = _run(_bin(tmp_path, 1000, prometheus=present))
    assert out.returncode == 0
    assert not (tmp_path / "apt.log").exists()
    if present:
        assert out.stderr == ""
    else:
        assert len(out.stderr.splitlines()) == 1
        assert "sudo apt-get install -y prometheus" in out.stderr
