"""Settings precedence (defaults < file < env < flags) and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_canary.cli import main
from vllm_canary.config import load_settings
from vllm_canary.errors import ConfigError
from vllm_canary.server.settings import ServeSettings


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("version: v3\nport: 9000\nlatency-factor: 2\nvllm_args: [--x]\n")
    env = {"VLLM_CANARY_PORT": "9100", "VLLM_CANARY_ERROR_RATE": "0.25"}
    s = load_settings(ServeSettings, {"port": 9200, "version": None}, file=cfg, env=env)
    assert (s.version, s.port, s.error_rate, s.latency_factor) == ("v3", 9200, 0.25, 2.0)
    assert s.vllm_args == ["--x"] and s.metrics_port == 8001


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("engine: upstream\nupstream: http://u:1\n")
    s = load_settings(ServeSettings, {}, env={"VLLM_CANARY_CONFIG": str(cfg)})
    assert s.engine == "upstream" and s.served_model_name() == ""


@pytest.mark.parametrize(
    ("text", "needle"),
    [("bogus: 1\n", "'bogus'"), ("port: [1\n", "not valid YAML"), ("- a\n", "mapping"),
     ("engine: vllm\n", "needs --model")],
)
def test_bad_settings_file_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(ServeSettings, {}, file=cfg, env={})
    assert needle in err.value.message


def test_cli_renders_user_errors_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--engine", "upstream", "--upstream", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be an http(s) URL" in err
    assert "Traceback" not in err


def test_settings_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bin.yaml"
    cfg.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as err:
        load_settings(ServeSettings, {}, file=cfg, env={})
    assert err.value.message.endswith("is not UTF-8 text")
