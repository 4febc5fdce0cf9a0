"""LoRA flag mistakes are one line and a non-zero exit, before anything starts (no vLLM
needed): `up --lora-v2`, `serve --lora`, `lora load|list|unload`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_canary import procs
from vllm_canary.cli import main


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _up(tmp_path: Path, *flags: str) -> list[str]:
    ports = [str(procs.free_port()) for _ in range(9)]
    names = ("--port", "--metrics-port", "--admin-port", "--v1-port", "--v2-port",
             "--v1-metrics-port", "--v2-metrics-port", "--prometheus-port", "--console-port")
    argv = ["up", "--no-prometheus", "--no-console", "--log-dir", str(tmp_path / "logs")]
    for name, port in zip(names, ports, strict=True):
        argv += [name, port]
    return argv + list(flags)


def test_up_lora_mistakes(tmp_path, adapter, model, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_CANARY_STATE", str(tmp_path / "state.json"))
    for flags, needle in (
        (["--lora-v2", str(adapter)], "--lora-v2 needs --engine vllm"),
        (["--engine", "vllm", "--model-v1", str(model), "--lora-v2", str(tmp_path / "none")],
         "is not a LoRA adapter folder"),
        (["--engine", "vllm", "--model-v1", str(model), "--model-v2", str(model),
          "--lora-v2", str(adapter)], "both name v2"),
        (["--engine", "vllm", "--model-v1", str(model), "--lora-v2", str(adapter),
          "--mirror-v2", "50"], "a mirror cannot set"),
    ):
        code, err = _run(_up(tmp_path, *flags), capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_serve_lora_mistakes(tmp_path, adapter, model, capsys):
    base = ["serve", "--engine", "vllm", "--model", str(model), "--port",
            str(procs.free_port()), "--metrics-port", "0"]
    for argv, needle in (
        (["serve", "--engine", "sim", "--lora", f"v2={adapter}"], "need --engine vllm"),
        ([*base, "--lora", f"v2={tmp_path / 'none'}"], "is not a LoRA adapter folder"),
        ([*base, "--lora", "v2"], "expected VERSION=DIR"),
        ([*base, "--lora", f"v1={adapter}"], "this server's own"),
        ([*base, "--lora", f"v2={adapter}", "--lora", f"v2={adapter}"], "given twice"),
        ([*base, "--lora", f"v2={adapter}", "--max-lora-rank", "4"], "vLLM takes one of"),
        ([*base, "--enable-lora", "--lora-error-rate", "v2=2"], "RATE from 0 to 1"),
    ):
        code, err = _run(argv, capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)


def test_lora_commands_without_a_stack(tmp_path, adapter, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_CANARY_STATE", str(tmp_path / "state.json"))
    monkeypatch.delenv("VLLM_CANARY_ADMIN_TOKEN", raising=False)
    code, err = _run(["lora", "list"], capsys)
    assert code == 1 and "no running local stack" in err
    code, err = _run(["lora", "load", "--version", "v3", "--path", str(adapter), "--server",
                      "http://127.0.0.1:1"], capsys)
    assert code == 2 and "--server needs --token" in err
    code, err = _run(["lora", "unload", "--version", "v3", "--server",
                      f"http://127.0.0.1:{procs.free_port()}", "--token", "t"], capsys)
    assert code == 1 and "is not reachable" in err
