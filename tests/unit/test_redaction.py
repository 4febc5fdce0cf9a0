"""The redaction table: each format, in each place a request-log record keeps text, is masked
with its placeholder; look-alikes that are not PII stay; the worst inputs stay linear."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vllm_canary.dataloop.logs import ReadStats, read_records
from vllm_canary.server import requestlog
from vllm_canary.server.redact import Redactor
from vllm_canary.server.requestlog import RequestLog, redact, redact_record

# (format, text, placeholder). Sources for the key shapes: AWS "Managing access keys"
# (AKIA + 16, secret 40 characters; the documentation's own example pair is used), Google
# API keys (AIza + 35), RFC 7519 (JWT), RFC 7468 (PEM), RFC 5322/6531 (e-mail), ITU E.164.
FORMATS = [
    ("email", "bob@example.com", "[EMAIL]"),
    ("email plus", "bob+newsletter@example.co.uk", "[EMAIL]"),
    ("email quoted", '"john q. doe"@example.org', "[EMAIL]"),
    ("email IP literal", "root@[192.0.2.1]", "[EMAIL]"),
    ("email IPv6 literal", "root@[IPv6:2001:db8::1]", "[EMAIL]"),
    ("email IDN", "jörg@bücher.de", "[EMAIL]"),
    ("email UTF-8 local part", "用户@例子.广告", "[EMAIL]"),
    ("phone E.164 US", "+14155552671", "[PHONE]"),
    ("phone E.164 DE", "+49 30 901820", "[PHONE]"),
    ("phone E.164 UK", "+44 20 7946 0958", "[PHONE]"),
    ("phone US national", "(415) 555-2671", "[PHONE]"),
    ("phone US dotted", "415.555.2671", "[PHONE]"),
    ("phone UK national", "020 7946 0958", "[PHONE]"),
    ("phone DE national", "030 901820", "[PHONE]"),
    ("phone FR national", "01 23 45 67 89", "[PHONE]"),
    ("JWT", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "[JWT]"),
    ("PEM", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
            "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"
            "-----END RSA PRIVATE KEY-----", "[PEM]"),
    ("PEM without END", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "[PEM]"),
    ("OpenAI key", "sk-proj-Ab3dEf6hIj9kLm2nOp5q", "[KEY]"),
    ("AWS access key id", "AKIAIOSFODNN7EXAMPLE", "[KEY]"),
    ("AWS secret key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "[KEY]"),
    ("Google API key", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", "[KEY]"),
    ("bearer token", "Bearer abc123.def456-ghi789_jk", "[KEY]"),
    ("GitHub token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "[KEY]"),
    ("hex secret", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "[KEY]"),
]

NOT_PII = [
    "in 2024 we sold 12345 units at 3.14",
    "order 2024-01-15, id 123456789, version 1.2.3",
    "The bearer responsibilities are listed in section 4",
    "email me at the usual address",
    "a@b",  # no domain with a dot
]


def _places(secret: str) -> dict[str, Any]:
    """A chat record with the secret in every place a record keeps text (the shapes the
    front logs: messages as dumped by pydantic, with the extra fields kept)."""
    return {
        "ts": "2026-01-01T00:00:00+00:00", "request_id": "chatcmpl-" + "ab" * 16,
        "version": "v1", "model": "sim-llm", "endpoint": "/v1/chat/completions", "status": 200,
        "prompt": f"p {secret} p",
        "messages": [
            {"role": "system", "content": f"s {secret} s", "name": secret},
            {"role": "user", "content": [{"type": "text", "text": f"u {secret} u"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": json.dumps({"q": secret})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"r {secret} r"},
        ],
        "params": {"stop": [f"{secret}"], "user": secret, "max_tokens": 5},
        "user": secret,
        "completion": f"c {secret} c",
        "error": f"invalid value: {secret}",
    }


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        if value.startswith("{"):
            return [value, *_strings(json.loads(value))]
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize(("kind", "text", "placeholder"), FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_is_masked_in_a_sentence(kind: str, text: str, placeholder: str) -> None:
    masked, hit = redact(f"please use {text} today")
    assert hit, kind
    if kind == "PEM without END":  # no end line: the mask runs on to the end of the text
        assert masked == f"please use {placeholder}"
    else:
        assert masked == f"please use {placeholder} today"


@pytest.mark.parametrize(("kind", "text", "placeholder"), FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_is_masked_in_every_place_of_a_record(kind: str, text: str,
                                                          placeholder: str) -> None:
    record = redact_record(_places(text))
    open_ended = kind == "PEM without END"  # what follows the BEGIN line is masked with it
    if open_ended:
        text = text[:27]

    def around(word: str) -> str:
        return f"{word} {placeholder}" + ("" if open_ended else f" {word}")

    assert record["redacted"] is True
    leaked = [s for s in _strings(record) if text in s]
    assert not leaked, f"{kind} left in {leaked}"
    assert record["messages"][0]["name"] == placeholder
    assert record["messages"][1]["content"][0]["text"] == around("u")
    assert record["params"]["stop"] == [placeholder]
    assert record["completion"] == around("c")
    arguments = record["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"q": placeholder}
    # the server's own metadata is left alone (a request id is hex, but not a secret)
    assert record["request_id"] == "chatcmpl-" + "ab" * 16


@pytest.mark.parametrize("text", NOT_PII)
def test_look_alikes_are_kept(text: str) -> None:
    assert redact(text) == (text, False)


def test_a_record_that_is_not_valid_json_is_repaired_written_and_counted(
        tmp_path: Path) -> None:
    log = RequestLog(tmp_path, "v1", host="h")
    registry = CollectorRegistry()
    log.register(registry)
    log.write({"request_id": "lone", "prompt": "a \ud800 b", "completion": "ok"})
    log.write({"request_id": "nan", "prompt": "x", "params": {"temperature": float("nan")}})
    log.write({"request_id": "obj", "prompt": "x", "params": {"seed": object()}})
    log.write({"request_id": "fine", "prompt": "x"})
    log.close()
    [path] = tmp_path.iterdir()
    lines = path.read_bytes().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is strict JSON
    assert [r["request_id"] for r in parsed] == ["lone", "nan", "obj", "fine"]
    assert parsed[0]["prompt"] == "a \ufffd b" and parsed[0]["repaired"] is True
    assert parsed[1]["params"]["temperature"] is None
    assert log.counts == {"written": 1, "repaired": 3, "dropped": 0, "failed": 0}
    text = generate_latest(registry).decode()
    assert 'vllm_canary_request_log_records_total{outcome="repaired",version="v1"} 3.0' in text
    assert next(iter(read_records([path], ReadStats())))["request_id"] == "lone"


WORST = {
    "one word": "a" * 1_000_000,
    "digits": "7" * 1_000_000,
    "at signs": "@" * 1_000_000,
    "a@a@": "a@" * 500_000,
    "quotes": '"' * 1_000_000,
    "eyJ": "eyJ" * 333_333,
    "BEGIN": "-----BEGIN X-----" * 58_823,
    "base64": "aB3/" * 250_000,
    "dots": "a." * 500_000,
}


@pytest.mark.parametrize("kind", WORST)
def test_worst_inputs_are_linear(kind: str) -> None:
    """1 MB of each pathological shape; the old e-mail regex took ~19 s on 100 KB of one
    word. A generous bound (a quadratic pattern takes minutes here); bench/ has the figures."""
    redactor = Redactor()
    started = time.process_time()
    redactor.text(WORST[kind])
    assert time.process_time() - started < 5.0


def test_a_flood_of_big_records_is_dropped_and_counted(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue is bounded in text as well as in records (100,000 records of 4 MB would not
    fit in memory)."""
    monkeypatch.setattr(requestlog, "MAX_QUEUED_BYTES", 1000)
    log = RequestLog(tmp_path, "v1", host="h")
    log.write({"request_id": "big", "prompt": "x" * 5000})
    log.write({"request_id": "small", "prompt": "x"})
    log.close()
    assert log.counts["dropped"] == 1 and log.counts["written"] == 1
    [path] = tmp_path.iterdir()
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == \
        ["small"]
