"""The alert rules pass `promtool check rules`, and `promtool test rules` shows each alert
firing on a bad canary and silent on a good one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require
from tests.fixtures.k8s import ROOT, find

RULES = ROOT / "deploy" / "prometheus" / "vllm-canary.rules.yaml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yaml"))
HOW = "install it with `apt-get install prometheus` (Debian), which ships promtool"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    require(binary is not None, "promtool", HOW)
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


def test_rules_file_passes_promtool_check():
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_chart_prometheusrule_is_the_same_rules(render, tmp_path: Path):
    spec = find(render().manifests, "PrometheusRule", "vllm-canary")["spec"]
    assert spec == yaml.safe_load(RULES.read_text())
    out = tmp_path / "from-chart.rules.yaml"
    out.write_text(yaml.safe_dump(spec))
    proc = _promtool("check", "rules", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent():
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts <= fired
    assert alerts <= silent


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS
    proc = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
