"""The front never changes what the model answers: a corpus of requests to the real vLLM (CPU
build, tiny model), each sent to vLLM directly and through `serve --engine vllm` (and through
`up`: gateway + front), must come back identical apart from what vLLM itself varies between
two identical requests (`id`, `created` and the other generated ids; checked here by sending
each request to vLLM twice). The front's only documented addition, the top-level `text` of a
non-streamed completion, is checked and then set aside.

One vLLM serves the whole session (tests/fixtures/vllm.py); the test that ends it runs last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vllm_canary import procs
from vllm_canary.server.observe import SSEDecoder

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

CLI = str(Path(sys.executable).with_name("vllm-canary"))
M = "tiny-v2"
CHAT = [{"role": "user", "content": "Is the new version good?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | None = None  # None: GET

    @property
    def streamed(self) -> bool:
        return bool(self.body and self.body.get("stream"))


def completion(name: str, **body: Any) -> Case:
    return Case(name, "/v1/completions",
                {"model": M, "prompt": "The canary release", "max_tokens": 8,
                 "temperature": 0, **body})


def chat(name: str, **body: Any) -> Case:
    return Case(name, "/v1/chat/completions",
                {"model": M, "messages": CHAT, "max_tokens": 8, "temperature": 0, **body})


USAGE = {"stream_options": {"include_usage": True}}
CORPUS = [
    completion("completion"),
    completion("completion-stream", stream=True),
    completion("completion-stream-usage", stream=True, **USAGE),
    completion("completion-logprobs", logprobs=2),
    completion("completion-stream-logprobs", logprobs=1, stream=True),
    completion("completion-echo", echo=True, logprobs=1, max_tokens=3),
    completion("completion-n2-seeded", n=2, temperature=0.9, seed=7),
    completion("completion-prompt-list", prompt=["hello", "the new model"]),
    completion("completion-token-ids", prompt=[5, 17, 42, 99]),
    completion("completion-stop", stop=[" a", "e"], max_tokens=16),
    completion("completion-ignore-eos-nulls", ignore_eos=True, top_p=None, n=None),
    completion("completion-context-too-long", prompt="hello world " * 300),
    completion("completion-unknown-model", model="no-such-model"),
    completion("completion-bad-temperature", temperature=-1),
    chat("chat"),
    chat("chat-stream", stream=True),
    chat("chat-stream-usage", stream=True, **USAGE),
    chat("chat-logprobs", logprobs=True, top_logprobs=2),
    chat("chat-stream-logprobs", logprobs=True, top_logprobs=1, stream=True),
    chat("chat-n2-seeded", n=2, temperature=0.9, seed=3),
    chat("chat-json-object", response_format={"type": "json_object"}),
    chat("chat-tools-none", tools=TOOLS, tool_choice="none"),
    chat("chat-no-max-tokens-null-temperature", max_tokens=None, temperature=None, seed=1,
         ignore_eos=False),
    chat("chat-stop", stop=["e"], max_tokens=16),
    Case("responses", "/v1/responses",
         {"model": M, "input": "Is the new version good?", "max_output_tokens": 8,
          "temperature": 0}),
    Case("responses-stream", "/v1/responses",
         {"model": M, "input": "Hello", "max_output_tokens": 6, "temperature": 0,
          "stream": True}),
    chat("chat-image-part", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]),
    Case("embeddings", "/v1/embeddings", {"model": M, "input": "hello"}),
    Case("tokenize", "/tokenize", {"model": M, "prompt": "hello canary"}),
    Case("tokenize-chat", "/tokenize", {"model": M, "messages": CHAT}),
    Case("detokenize", "/detokenize", {"model": M, "tokens": [77, 335, 459]}),
    Case("version", "/version"),
    Case("models", "/v1/models"),
    Case("unknown-route", "/v1/no-such-route"),
]

# What vLLM generates per request (ids, timestamps): replaced before comparing. The test checks
# that two direct requests differ only there, so nothing else can hide behind it.
VOLATILE_KEYS = {"id", "created", "created_at", "item_id", "call_id"}
GENERATED_ID = re.compile(r"^(cmpl|chatcmpl|resp|msg|rs|fc|call|chatcmpl-tool)[-_][0-9a-f]{8,}$")


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<volatile>" if k in VOLATILE_KEYS else normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, str) and GENERATED_ID.match(value):
        return "<volatile>"
    return value


def merge_stream(events: list[tuple[str | None, Any]]) -> dict[str, Any]:
    """A stream's content, whatever the grouping of tokens into deltas: vLLM itself varies it
    between two identical requests (when its engine runs ahead of the API server, several
    tokens go out in one delta). Per choice: the joined texts and logprob lists and the last
    value of every other field; the Responses API's deltas joined per output part; every
    other event as it is (`sequence_number` aside, which counts the deltas)."""
    choices: dict[int, dict[str, Any]] = {}
    joined: dict[str, str] = {}
    others, meta = [], set()
    for name, data in events:
        if not isinstance(data, dict):
            others.append(data)  # "[DONE]"
            continue
        if name is not None:  # the Responses API
            rest = {k: v for k, v in data.items() if k != "sequence_number"}
            if name.endswith(".delta"):
                key = f"{name}:{data.get('output_index')}:{data.get('content_index')}"
                joined[key] = joined.get(key, "") + str(data.get("delta", ""))
            else:
                others.append((name, rest))
            continue
        meta.add(json.dumps(normalise({k: v for k, v in data.items()
                                       if k not in ("choices", "usage")}), sort_keys=True))
        if data.get("usage"):
            others.append({"usage": data["usage"]})
        for choice in data.get("choices") or ():
            merged = choices.setdefault(choice["index"], {})
            for key, value in choice.items():
                if key == "delta":
                    for dk, dv in value.items():
                        if isinstance(dv, str) and dk != "role":
                            merged[f"delta.{dk}"] = merged.get(f"delta.{dk}", "") + dv
                        elif dv is not None:
                            merged[f"delta.{dk}"] = dv
                elif key == "text":
                    merged["text"] = merged.get("text", "") + value
                elif key == "logprobs" and value:
                    for lk, lv in value.items():
                        if isinstance(lv, list):
                            merged.setdefault(f"logprobs.{lk}", []).extend(lv)
                elif value is not None or key not in merged:
                    merged[key] = value
    return {"choices": choices, "joined": joined, "events": others, "meta": sorted(meta)}


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any  # parsed JSON, a merged stream (merge_stream), or text
    headers: dict[str, str]


def parse_sse(raw: bytes) -> list[tuple[str | None, Any]]:
    """(Responses API event type or None, parsed data) per event, by the relay's own decoder."""
    decoder = SSEDecoder()
    payloads = [*decoder.feed(raw), decoder.flush()]
    events: list[tuple[str | None, Any]] = []
    for payload in payloads:
        if payload is None:
            continue
        data = payload.decode() if payload == b"[DONE]" else json.loads(payload)
        events.append((data.get("type") if isinstance(data, dict) else None, data))
    return events


def send(base: str, case: Case, headers: dict[str, str] | None = None) -> Answer:
    data = None if case.body is None else json.dumps(case.body).encode()
    req = urllib.request.Request(base + case.path, data=data,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw, got = resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers.items())
    content_type = got.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        body: Any = merge_stream(parse_sse(raw))
    elif content_type.startswith("application/json"):
        body = json.loads(raw)
    else:
        body = raw.decode(errors="replace")
    return Answer(status, content_type, body, {k.lower(): v for k, v in got.items()})


def without_text(case: Case, answer: Answer) -> Any:
    """The front's one addition to a body, checked and removed."""
    body = answer.body
    if case.path == "/v1/completions" and not case.streamed and answer.status == 200:
        assert body["text"] == body["choices"][0]["text"]
        return {k: v for k, v in body.items() if k != "text"}
    return body


def check_corpus(direct_url: str, relayed_url: str, headers: dict[str, str] | None = None
                 ) -> dict[str, str]:
    """Every case direct (twice) and relayed; returns the differences found, by case."""
    problems: dict[str, str] = {}
    for case in CORPUS:
        first, second = send(direct_url, case), send(direct_url, case)
        relayed = send(relayed_url, case, headers)
        if normalise(first.body) != normalise(second.body) or first.status != second.status:
            problems[case.name] = f"vLLM itself varies: {first.body!r:.300} / {second.body!r:.300}"
            continue
        expected = (first.status, first.content_type, normalise(first.body))
        got = (relayed.status, relayed.content_type, normalise(without_text(case, relayed)))
        if got != expected:
            problems[case.name] = f"direct {expected!r:.600}\nrelayed {got!r:.600}"
        elif relayed.headers.get("x-model-version") is None:
            problems[case.name] = "no x-model-version header"
    return problems


def test_corpus_is_broad() -> None:
    assert len(CORPUS) >= 20
    assert len({c.name for c in CORPUS}) == len(CORPUS)


def test_the_corpus_is_identical_through_serve_engine_vllm(vllm_server: Any) -> None:
    problems = check_corpus(vllm_server.child_url, vllm_server.server.url)
    assert problems == {}, "\n\n".join(f"{k}: {v}" for k, v in problems.items())


def test_every_answer_is_what_the_corpus_expects(vllm_server: Any) -> None:
    """The corpus exercises what it says: real answers, real errors."""
    front = vllm_server.server.url
    by_name = {c.name: c for c in CORPUS}
    logprobs = send(front, by_name["completion-logprobs"]).body
    assert logprobs["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(send(front, by_name["completion-n2-seeded"]).body["choices"]) == 2
    assert len(send(front, by_name["completion-prompt-list"]).body["choices"]) == 2
    assert send(front, by_name["completion-context-too-long"]).status == 400
    assert send(front, by_name["completion-unknown-model"]).status == 404
    assert send(front, by_name["completion-bad-temperature"]).status == 400
    stream = send(front, by_name["chat-stream-logprobs"]).body
    assert stream["choices"][0]["logprobs.content"] and stream["events"] == ["[DONE]"]
    stream = send(front, by_name["completion-stream-usage"]).body
    assert stream["events"][0]["usage"]["completion_tokens"] == 8
    no_max = send(front, by_name["chat-no-max-tokens-null-temperature"])
    assert no_max.status == 200, no_max.body  # nothing defaulted: vLLM's own max_tokens
    assert send(front, by_name["version"]).body == {"version": "0.32.0"}
    assert send(front, by_name["unknown-route"]).status == 404


def test_curls_form_content_type_is_forwarded_as_json(vllm_server: Any) -> None:
    """The seed's `curl -d` (form content type): vLLM alone refuses it, the front relays it as
    application/json, and the answer is the one vLLM gives a JSON request."""
    case = completion("completion")
    form = {"content-type": "application/x-www-form-urlencoded"}
    refused = send(vllm_server.child_url, case, form)
    assert refused.status == 400 and "application/json" in json.dumps(refused.body)
    relayed = send(vllm_server.server.url, case, form)
    direct = send(vllm_server.child_url, case)
    assert relayed.status == 200
    assert normalise(without_text(case, relayed)) == normalise(direct.body)


# -- the same corpus through `up` (gateway + front), sharing the session's vLLM ----------------


@pytest.fixture(scope="module")
def stack(shared_vllm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm-canary up` with both versions' fronts relaying to the session's vLLM (engine
    `upstream`: the same relay as engine `vllm`, without a second 3 GB vLLM)."""
    vllm_server = shared_vllm.get()
    tmp = tmp_path_factory.mktemp("up-relay")
    flags = ("--v1-port", "--v1-metrics-port", "--v2-port", "--v2-metrics-port", "--port",
             "--metrics-port", "--admin-port")
    argv = [CLI, "up", "--engine", "upstream", "--upstream-v1", vllm_server.child_url,
            "--upstream-v2", vllm_server.child_url, "--no-prometheus", "--no-console",
            "--log-dir", str(tmp / "logs")]
    ports = {flag: procs.free_port() for flag in flags}
    for flag, port in ports.items():
        argv += [flag, str(port)]
    env = {**os.environ, "VLLM_CANARY_STATE": str(tmp / "state.json")}
    log = tmp / "up.out"
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['--port']}"
    deadline = time.monotonic() + 120
    while "Ctrl-C" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"up did not start:\n{log.read_text()}")
        time.sleep(0.2)
    try:
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_corpus_is_identical_through_up_gateway_and_front(vllm_server: Any,
                                                             stack: str) -> None:
    seed_host = {"host": "vllm-service.default.svc.cluster.local"}
    problems = check_corpus(vllm_server.child_url, stack, seed_host)
    assert problems == {}, "\n\n".join(f"{k}: {v}" for k, v in problems.items())
