"""decode_json: every malformed or over-limit body is a 400 ApiError with code invalid_json
(the probe's 500s: a lone surrogate, 5,000-deep nesting, a 5,000-digit integer)."""

from __future__ import annotations

import logging

import pytest

from vllm_canary.server import jsonlimits
from vllm_canary.server.api import ApiError, decode_json

BAD = {
    "lone high surrogate": b'{"prompt":"\\ud800"}',
    "lone low surrogate": b'{"prompt":"a\\udc00b"}',
    "nested 5000 deep": b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nested 65 deep": b'{"a":' + b"[" * 64 + b"]" * 64 + b"}",
    "5000-digit integer": b'{"max_tokens":' + b"9" * 5000 + b"}",
    "float overflow": b'{"temperature":1e999}',
    "NaN": b'{"temperature":NaN}',
    "Infinity": b'{"temperature":-Infinity}',
    "invalid UTF-8": b'{"prompt":"\xff\xfe"}',
    "trailing data": b'{"prompt":"x"} {}',
    "not an object": b'["prompt"]',
    "empty": b"  ",
    "truncated": b'{"prompt":"x',
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_bad_bodies_are_400_invalid_json(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        decode_json(raw)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["code"] == "invalid_json"


def test_what_stays_accepted() -> None:
    assert decode_json(b'{"prompt":"\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}  # a pair
    assert decode_json(b'\xef\xbb\xbf{"prompt":"x"}') == {"prompt": "x"}  # BOM skipped
    deep = b'{"a":' + b"[" * 63 + b"]" * 63 + b"}"  # 64 levels with the object
    assert "a" in decode_json(deep)
    assert decode_json(b'{"seed":18446744073709551615}') == {"seed": 18446744073709551615}


def test_depth_is_counted_without_recursion() -> None:
    wide = b"[" + b",".join([b"[1]"] * 100_000) + b"]"  # many brackets, depth 2
    assert len(jsonlimits.loads(wide)) == 100_000
    assert jsonlimits._deeper_than([[[]]], 2) and not jsonlimits._deeper_than([[[]]], 3)


def test_a_rejected_body_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vllm_canary.server")
    with pytest.raises(ApiError):
        decode_json(b'{"prompt":"\\ud800"}')
    [record] = caplog.records
    assert record.levelno == logging.INFO and "not valid JSON" in record.getMessage()
    assert record.exc_info is None
