"""The gateway's commands as a user types them: mistakes are one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vllm_canary import procs

CLI = str(Path(sys.executable).with_name("vllm-canary"))


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_CANARY_STATE": str(tmp / "none.json")}
    env.pop("VLLM_CANARY_ADMIN_TOKEN", None)
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env=env)


def one_line_error(out: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert out.returncode == code, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert words in out.stderr


def test_gateway_needs_an_upstream(tmp_path: Path) -> None:
    one_line_error(run("gateway", tmp=tmp_path), 2, "--upstream SUBSET=URL")


def test_gateway_rejects_a_bad_routes_file(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                      "metadata: {name: vs}\nspec: {hosts: [a], http: [{route: [], retry: {}}]}\n")
    one_line_error(run("gateway", "--routes", str(routes), "--upstream", "v1=http://x:1",
                       tmp=tmp_path), 2, "spec.http[0].retry")


def test_gateway_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = run("gateway", "--upstream", "v1=http://127.0.0.1:1", "--port", str(port),
                  "--metrics-port", str(procs.free_port()), "--admin-port",
                  str(procs.free_port()), tmp=tmp_path)
    one_line_error(out, 2, f"cannot listen on 127.0.0.1:{port}")


def test_routes_without_a_stack(tmp_path: Path) -> None:
    one_line_error(run("routes", "get", tmp=tmp_path), 1, "start one with `vllm-canary up`")
    one_line_error(run("status", tmp=tmp_path), 1, "vllm-canary up")


def test_set_weight_syntax(tmp_path: Path) -> None:
    out = run("routes", "set-weight", "v1=75", "v2", "--admin-url", "http://127.0.0.1:1",
              "--admin-token", "t", tmp=tmp_path)
    one_line_error(out, 2, "expected SUBSET=WEIGHT")


def test_admin_api_not_reachable(tmp_path: Path) -> None:
    out = run("routes", "get", "--admin-url", f"http://127.0.0.1:{procs.free_port()}",
              "--admin-token", "t", tmp=tmp_path)
    one_line_error(out, 1, "is not reachable")


def test_unreadable_yaml_files_are_one_line(tmp_path: Path) -> None:
    broken, binary = tmp_path / "broken.yaml", tmp_path / "utf16.yaml"
    broken.write_text("kind: [unclosed\n")
    binary.write_bytes(b"\xff\xfek\x00i\x00n\x00d\x00")
    one_line_error(run("gateway", "--routes", str(broken), "--upstream", "v1=http://x:1",
                       tmp=tmp_path), 2, "is not valid YAML: line 2, column 1")
    one_line_error(run("gateway", "--routes", str(binary), "--upstream", "v1=http://x:1",
                       tmp=tmp_path), 2, "is not UTF-8")
    one_line_error(run("gateway", "--endpoints", str(broken), tmp=tmp_path), 2,
                   "endpoints file")
    one_line_error(run("gateway", "--endpoints", str(binary), tmp=tmp_path), 2, "is not UTF-8")


def test_admin_url_that_is_not_a_url(tmp_path: Path) -> None:
    out = run("routes", "get", "--admin-url", "127.0.0.1:15000", "--admin-token", "t",
              tmp=tmp_path)
    one_line_error(out, 2, "is not an http:// URL")
