"""A fuzzing campaign, as a hostile client would run it, against `serve` (sim engine) and the
`gateway` in front of it (real processes): seeded hypothesis JSON shapes for both endpoints
plus a catalogue of malformed HTTP on raw sockets (also sent to the gateway's admin API).

Asserted over every request: no 5xx (a client's mistake is a 4xx), no hang (a 10 s socket
timeout), every error an OpenAI-style JSON body, no traceback in either server's log, and a
good request still answered afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.server import StartServer
from vllm_canary import procs

CLI = str(Path(sys.executable).with_name("vllm-canary"))
TIMEOUT = 10.0  # seconds a request may take before it counts as a hang
EXAMPLES = 1400  # hypothesis cases; each goes to both targets (2,800 requests)


@dataclass
class Target:
    name: str
    port: int
    log: Path
    seen: Counter[int] = field(default_factory=Counter)

    def request(self, method: str, path: str, body: bytes,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            heads = {k.lower(): v for k, v in resp.getheaders()}
            self.seen[resp.status] += 1
            return resp.status, heads, data
        finally:
            conn.close()


def assert_answer(target: Target, what: object, status: int, headers: dict[str, str],
                  body: bytes) -> None:
    """A 4xx has an OpenAI-style JSON error; nothing is a 5xx."""
    assert status < 500, f"{target.name}: {status} for {what!r}: {body[:300]!r}"
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), \
            f"{target.name}: {status} not JSON for {what!r}: {body[:200]!r}"
        error = json.loads(body)["error"]
        assert {"message", "type", "param", "code"} <= set(error), (target.name, what, error)
        assert isinstance(error["message"], str) and error["message"]


# -- hypothesis: JSON shapes --------------------------------------------------------------
_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_small_int = st.integers(-3, 40) | _json
_text = st.text(max_size=60) | st.sampled_from(["hello", "bob@example.com", "+14155552671",
                                                 "", " ", "\x00", "\U0001f600" * 5])
_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]) | _json},
                              optional={"text": _text | _json,
                                        "image_url": _json})
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "bot"])
     | _json},
    optional={"content": _text | st.lists(_part, max_size=3) | _json,
              "name": _text | _json,
              "tool_calls": st.lists(st.fixed_dictionaries(
                  {"id": _text, "type": st.just("function"),
                   "function": st.fixed_dictionaries({"name": _text, "arguments": _text})}),
                  max_size=2) | _json,
              "tool_call_id": _text})
_sampling = {
    "model": st.just("sim-llm") | _text | _json,
    "max_tokens": _small_int, "temperature": st.floats(-1, 3) | _json,
    "top_p": st.floats(-1, 2) | _json, "n": _small_int, "seed": _small_int,
    "stop": _text | st.lists(_text, max_size=5) | _json,
    "stream": st.booleans() | _json,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})
    | _json,
    "user": _text | _json, "logprobs": _small_int | st.booleans(),
    "echo": st.booleans() | _json, "best_of": _small_int, "top_k": _small_int,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(
        ["text", "json_object", "json_schema", "x"])}) | _json,
    "tools": st.lists(_json, max_size=2) | _json, "tool_choice": _text | _json,
    "presence_penalty": st.floats(-3, 3) | _json, "logit_bias": _json,
}
_completion = st.fixed_dictionaries(
    {"prompt": _text | st.lists(_text, max_size=3) | st.lists(st.integers(-5, 70000),
                                                               max_size=5) | _json},
    optional=_sampling)
_chat = st.fixed_dictionaries({"messages": st.lists(_message, max_size=4) | _json},
                              optional=_sampling)
_bodies = st.one_of(
    st.tuples(st.just("/v1/completions"), _completion.map(json.dumps)),
    st.tuples(st.just("/v1/chat/completions"), _chat.map(json.dumps)),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
              _json.map(json.dumps)),  # any JSON at all
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
              st.binary(max_size=80).map(lambda b: b.decode("latin-1"))),  # not JSON
)

# -- the raw HTTP catalogue -----------------------------------------------------------------
_OK = b'{"prompt":"hi","max_tokens":2}'


def _post(body: bytes, extra: bytes = b"", path: bytes = b"/v1/completions") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


RAW = {
    "bad request line": b"GET\r\n\r\n",
    "not HTTP": b"HELLO THERE\r\n\r\n",
    "unknown method": b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "NUL bytes": b"GET /\x00 HTTP/1.1\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "bare LF": b"GET /health HTTP/1.1\nHost: x\n\n",
    "space before colon": b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
    "header without colon": b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
    "130 headers": b"GET /health HTTP/1.1\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(130))
                   + b"\r\n",
    "9 KiB header line": b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 9 * 1024 + b"\r\n\r\n",
    "70 KiB header line": b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 70 * 1024 + b"\r\n\r\n",
    "9 KiB URL": b"GET /" + b"a" * 9 * 1024 + b" HTTP/1.1\r\n\r\n",
    "non-latin path": "GET /v1/m\u00f6dels/\u2603 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "percent garbage path": b"GET /%zz%00%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute form": b"GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad content-length": b"POST /v1/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    "negative content-length": b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    "two content-lengths": b"POST /v1/completions HTTP/1.1\r\nContent-Length: 3\r\n"
                           b"Content-Length: 30\r\n\r\nabc",
    "CL and TE": b"POST /v1/completions HTTP/1.1\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\n",
    "TE gzip": b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    "expect 100 with huge body": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                 b"Expect: 100-continue\r\nContent-Length: 999999999\r\n\r\n",
    "lone surrogate": _post(b'{"prompt":"\\ud800","max_tokens":2}'),
    "nested 5000 deep": _post(b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "5000-digit integer": _post(b'{"prompt":"x","max_tokens":' + b"9" * 5000 + b"}"),
    "NaN temperature": _post(b'{"prompt":"x","temperature":NaN}'),
    "invalid UTF-8": _post(b'{"prompt":"\xff\xfe\xfd"}'),
    "JSON array": _post(b"[1,2,3]"),
    "empty body": _post(b""),
    "form body": _post(b"prompt=hello&max_tokens=5",
                       b"Content-Type: application/x-www-form-urlencoded\r\n"),
    "GET on completions": b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    "DELETE on models": b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown path": b"GET /v1/nothing/here HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad content-type": _post(_OK, b"Content-Type: \xff\xfe/\x00\r\n"),
    "x-ab-test v2 lone surrogate": _post(b'{"prompt":"\\udfff"}', b"x-ab-test: v2\r\n"),
    "huge max_tokens": _post(b'{"prompt":"x","max_tokens":100000000}'),
    "1 MB one-word prompt": _post(b'{"prompt":"' + b"a" * 1_000_000 + b'","max_tokens":1}'),
}


def send_raw(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """Send raw bytes, read one answer (to Content-Length or the end); None if the server
    closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with contextlib.suppress(OSError):  # closed while we were sending: read what it said
            sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                piece = b""
            if not piece:
                return None if not data else _split(data, sock)
            data += piece
        return _split(data, sock)


def _split(data: bytes, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if 100 <= status < 200:  # an interim answer: the real one follows
        while b"\r\n\r\n" not in body:
            piece = sock.recv(65536)
            if not piece:
                raise AssertionError(f"closed after an interim {status}")
            body += piece
        return _split(body, sock)
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return status, headers, body


@pytest.fixture
def targets(serve_process: StartServer, tmp_path: Path) -> Iterator[list[Target]]:
    server = serve_process("v1", "--ttft-ms", "0", "--tpot-ms", "0")
    port, mport, aport = procs.free_port(), procs.free_port(), procs.free_port()
    gw_log = tmp_path / "gateway.log"
    gw = procs.start([CLI, "gateway", "--host", "127.0.0.1", "--port", str(port),
                      "--metrics-port", str(mport), "--admin-port", str(aport),
                      "--upstream", f"v1={server.url}", "--upstream", f"v2={server.url}",
                      "--health-path", ""],
                     env={"VLLM_CANARY_ADMIN_TOKEN": "t"}, log=gw_log)
    try:
        procs.wait_http(f"http://127.0.0.1:{mport}/metrics", 60, gw)
        serve_log = tmp_path / f"serve-v1-{server.port}.log"
        yield [Target("serve", server.port, serve_log), Target("gateway", port, gw_log),
               Target("gateway admin API", aport, gw_log)]
    finally:
        procs.stop(gw)


def test_fuzz_campaign(targets: list[Target]) -> None:
    started = time.monotonic()
    for target in targets:
        for name, raw in RAW.items():
            answer = send_raw(target.port, raw)
            assert answer is not None, f"{target.name}: no answer to {name}"
            assert_answer(target, name, *answer)
            target.seen[answer[0]] += 1

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=_bodies, ab=st.booleans())
    def one(case: tuple[str, str], ab: bool) -> None:
        path, text = case
        body = text.encode("utf-8", "surrogatepass")  # lone surrogates go out as sent
        headers = {"x-ab-test": "v2"} if ab else {}
        for target in targets[:2]:
            status, heads, data = target.request("POST", path, body, headers)
            assert_answer(target, (path, text[:200]), status, heads, data)
            if status == 200 and heads.get("content-type", "").startswith("text/event-stream"):
                assert data.rstrip().endswith(b"data: [DONE]"), (target.name, text[:200])

    one()
    for target in targets[:2]:  # still serving, and answering well
        status, _, data = target.request("POST", "/v1/completions", _OK)
        assert status == 200 and json.loads(data)["choices"][0]["text"]
        status, _, _ = target.request("GET", "/health" if target.name == "serve"
                                      else "/v1/models", b"")
        assert status == 200
    took = time.monotonic() - started
    total = sum(sum(t.seen.values()) for t in targets)
    for target in targets:
        text = target.log.read_text(errors="replace")
        assert "Traceback" not in text, f"{target.name} logged a traceback:\n{text[-3000:]}"
    print(f"fuzz: {total} requests in {took:.1f}s; "
          + "; ".join(f"{t.name} {dict(sorted(t.seen.items()))}" for t in targets))
    assert total >= 2 * EXAMPLES
    assert all(code < 500 for t in targets for code in t.seen)
