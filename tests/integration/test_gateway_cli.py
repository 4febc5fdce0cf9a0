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


def token_file(tmp: Path) -> Path:
    path = tmp / "admin-token"
    path.write_text("t\n")
    return path


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
              "--admin-token-file", str(token_file(tmp_path)), tmp=tmp_path)
    one_line_error(out, 2, "expected SUBSET=WEIGHT")


def test_admin_api_not_reachable(tmp_path: Path) -> None:
    out = run("routes", "get", "--admin-url", f"http://127.0.0.1:{procs.free_port()}",
              "--admin-token-file", str(token_file(tmp_path)), tmp=tmp_path)
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
    out = run("routes", "get", "--admin-url", "127.0.0.1:15000", "--admin-token-file",
              str(token_file(tmp_path)), tmp=tmp_path)
    one_line_error(out, 2, "is not an http:// URL")


def test_admin_token_is_never_a_flag(tmp_path: Path) -> None:
    one_line_error(run("gateway", "--upstream", "v1=http://127.0.0.1:1", "--admin-token", "s3",
                       tmp=tmp_path), 2, "--admin-token-file")
    one_line_error(run("gateway", "--upstream", "v1=http://127.0.0.1:1", "--admin-token-file",
                       str(tmp_path / "missing"), tmp=tmp_path), 2, "cannot read it")


def test_a_client_token_on_argv_still_works_with_a_warning(tmp_path: Path) -> None:
    """Issue 14: argv shows in `ps`, so clients read the token from $VLLM_CANARY_ADMIN_TOKEN
    or --admin-token-file; --admin-token (old scripts) is used with a one-line warning."""
    out = run("routes", "get", "--admin-url", f"http://127.0.0.1:{procs.free_port()}",
              "--admin-token", "t", tmp=tmp_path)
    first, second = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "shows the token in `ps`" in first
    assert "is not reachable" in second and "Traceback" not in out.stderr
    assert "--admin-token " not in run("routes", "get", "--help", tmp=tmp_path).stdout


def test_a_remote_admin_bind_needs_allow_remote(tmp_path: Path) -> None:
    one_line_error(run("gateway", "--upstream", "v1=http://127.0.0.1:1", "--admin-host",
                       "0.0.0.0", tmp=tmp_path), 2, "--admin-allow-remote")


def _start_gateway(tmp: Path, *flags: str, env: dict[str, str] | None = None
                   ) -> tuple[subprocess.Popen[bytes], Path, dict[str, int]]:
    ports = {k: procs.free_port() for k in ("port", "metrics", "admin")}
    log = tmp / "gateway.log"
    base = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    base.pop("VLLM_CANARY_ADMIN_TOKEN", None)
    proc = procs.start([CLI, "gateway", "--upstream", "v1=http://127.0.0.1:1", "--health-path",
                        "", "--port", str(ports["port"]), "--metrics-port",
                        str(ports["metrics"]), "--admin-port", str(ports["admin"]), *flags],
                       env={**base, **(env or {})}, log=log)
    procs.wait_http(f"http://127.0.0.1:{ports['metrics']}/metrics", 60, proc)
    return proc, log, ports


def _admin_status(port: int, authorization: bytes | None) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = b"GET /routes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if authorization is not None:
            head += b"Authorization: " + authorization + b"\r\n"
        sock.sendall(head + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_random_admin_token_goes_to_a_private_file_and_is_never_printed(
        tmp_path: Path) -> None:
    proc, log, ports = _start_gateway(tmp_path)
    try:
        [token_file] = (tmp_path / "state" / "vllm-canary").glob("gateway-admin-*.token")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert _admin_status(ports["admin"], b"Bearer " + token.encode()) == 200
        for bad in (None, b"Bearer", b"Bearer wrong", b"Basic " + token.encode(),
                    b"Bearer \xff\xfe\x80", b"\xc3\x28" * 10, b"Bearer " + token.encode() + b"x"):
            assert _admin_status(ports["admin"], bad) == 401, bad
    finally:
        procs.stop(proc)
    text = log.read_text()
    assert token not in text and str(token_file) in text and "Traceback" not in text


def test_admin_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    proc, _, ports = _start_gateway(tmp_path, "--admin-token-file", str(secret))
    try:
        assert _admin_status(ports["admin"], b"Bearer from-a-file") == 200
    finally:
        procs.stop(proc)
    proc, log, ports = _start_gateway(tmp_path, env={"VLLM_CANARY_ADMIN_TOKEN": "from-env"})
    try:
        assert _admin_status(ports["admin"], b"Bearer from-env") == 200
        assert _admin_status(ports["admin"], b"Bearer from-a-file") == 401
    finally:
        procs.stop(proc)
    assert "from-env" not in log.read_text()


def test_allow_remote_admin_warns(tmp_path: Path) -> None:
    proc, log, ports = _start_gateway(tmp_path, "--admin-host", "0.0.0.0",
                                      "--admin-allow-remote",
                                      env={"VLLM_CANARY_ADMIN_TOKEN": "t"})
    try:
        assert _admin_status(ports["admin"], b"Bearer t") == 200
    finally:
        procs.stop(proc)
    assert "beyond this machine" in log.read_text()


def test_admin_api_bad_json_is_400(tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    proc, log, ports = _start_gateway(tmp_path, env={"VLLM_CANARY_ADMIN_TOKEN": "t"})
    try:
        for body in (b'{"weights":' + b"[" * 5000 + b"]" * 5000 + b"}",
                     b'{"weights":{"v1":' + b"9" * 5000 + b"}}", b'{"weights":"\\ud800"}',
                     b"\xff"):
            req = urllib.request.Request(f"http://127.0.0.1:{ports['admin']}/weights",
                                         data=body, method="PUT",
                                         headers={"Authorization": "Bearer t"})
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError("accepted")
            except urllib.error.HTTPError as exc:
                assert exc.code == 400, body[:40]
                assert json.loads(exc.read())["error"]["code"] in ("invalid_json",
                                                                   "invalid_weights")
    finally:
        procs.stop(proc)
    assert "Traceback" not in log.read_text()
