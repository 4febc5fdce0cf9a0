"""The pure parts of LoRA versions: the `model` rewrite (a byte splice, never a
re-serialization), adapter specs and folders, served names, and the version table."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_canary.errors import UserError
from vllm_canary.server.lora import (
    Adapter,
    LoraError,
    LoraTable,
    default_name,
    max_rank_for,
    parse_spec,
    read_adapter,
    rewrite_model,
)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"model":"tiny-v1","prompt":"hi"}', b'{"model":"A","prompt":"hi"}'),
    # whitespace, key order and number spelling around it stay byte for byte
    (b'{ "prompt" : "hi" ,\n  "model" :  "x" , "max_tokens": 5.0E0 }',
     b'{ "prompt" : "hi" ,\n  "model" :  "A" , "max_tokens": 5.0E0 }'),
    # a nested `model` (in messages, in a tool schema) is not the request's model
    (b'{"messages":[{"role":"user","content":"{\\"model\\": 1}","model":"n"}],"model":null}',
     b'{"messages":[{"role":"user","content":"{\\"model\\": 1}","model":"n"}],"model":"A"}'),
    # an escaped key is still `model`; a duplicate key: every one (parsers keep the last)
    (b'{"mod\\u0065l":"x","model":"y"}', b'{"mod\\u0065l":"A","model":"A"}'),
    # absent: inserted first, nothing else moves
    (b'{"prompt":"hi"}', b'{"model":"A","prompt":"hi"}'),
    (b' {  } ', b' {"model":"A"  } '),
    # values of every kind are skipped correctly
    (b'{"a":[1,{"b":"]}"}],"c":true,"d":{"model":"z"},"model":123}',
     b'{"a":[1,{"b":"]}"}],"c":true,"d":{"model":"z"},"model":"A"}'),
])
def test_rewrite_changes_only_the_model_value(body, expected):
    assert rewrite_model(body, "A") == expected


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'"s"', b"{", b"{}{}", b"\xff"])
def test_rewrite_leaves_a_body_that_is_not_one_json_object(body):
    assert rewrite_model(body, "A") == body


def test_rewrite_reads_what_python_json_reads():
    body = b'{"n": 123456789012345678901234567890, "model": "x"}'
    assert rewrite_model(body, "A") == body.replace(b'"x"', b'"A"')


def test_rewrite_escapes_the_name():
    out = rewrite_model(b'{"model":"x"}', 'we"ird\u00e9')
    assert orjson.loads(out) == {"model": 'we"ird\u00e9'}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["model", "prompt", "m", "x"]) | st.text(max_size=5),
                           _json, max_size=5),
       indent=st.booleans(), name=st.text(max_size=10))
def test_rewrite_equals_setting_the_field(doc, indent, name):
    body = json.dumps(doc, indent=2 if indent else None, ensure_ascii=False).encode()
    out = rewrite_model(body, name)
    assert json.loads(out) == {**doc, "model": name}
    if "model" in doc and not indent:  # one contiguous region, at most the old value, changed
        old = json.dumps(doc["model"], ensure_ascii=False).encode()
        limit = min(len(out), len(body))
        pre = next((i for i in range(limit) if out[i] != body[i]), limit)
        suf = next((i for i in range(limit - pre) if out[-1 - i] != body[-1 - i]), limit - pre)
        assert len(body) - pre - suf <= len(old)


def test_parse_spec():
    assert parse_spec("v2=/a/b") == ("v2", None, "/a/b")
    assert parse_spec("v3:my-lora=rel/dir") == ("v3", "my-lora", "rel/dir")
    for bad in ("v2", "=x", "v2=", "-bad=/x"):
        with pytest.raises(UserError):
            parse_spec(bad)


def _adapter(folder: Path, r: object = 8, peft: str = "LORA", weights: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft, "r": r}))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"w" * 10)
    return folder


def test_read_adapter(tmp_path):
    folder, rank = read_adapter(_adapter(tmp_path / "a"))
    assert folder == (tmp_path / "a").resolve() and rank == 8
    for bad, needle in ((tmp_path / "none", "no adapter_config.json"),
                        (_adapter(tmp_path / "b", peft="IA3"), "not LORA"),
                        (_adapter(tmp_path / "c", r="8"), "rank"),
                        (_adapter(tmp_path / "d", weights=False), "safetensors")):
        with pytest.raises(UserError, match=needle):
            read_adapter(bad)


def test_default_name_changes_with_the_weights(tmp_path):
    a = _adapter(tmp_path / "a")
    first = default_name("tiny-v1", "v2", a)
    assert first.startswith("tiny-v1-v2-") and first == default_name("tiny-v1", "v2", a)
    (a / "adapter_model.safetensors").write_bytes(b"other")
    assert default_name("tiny-v1", "v2", a) != first
    assert default_name("tiny-v1", "v3", a) != default_name("tiny-v1", "v2", a)


def test_max_rank_for():
    assert max_rank_for([8]) == 16
    assert max_rank_for([8], floor=1) == 8
    assert max_rank_for([17, 4]) == 32
    with pytest.raises(UserError):
        max_rank_for([1000])


def test_table_resolves_versions():
    a = Adapter("v2", "tiny-v1-v2-abc", "/a", 8)
    table = LoraTable("v1").with_(a)
    assert table.resolve(None) is None and table.resolve("v1") is None
    assert table.resolve(" v2 ") == a
    with pytest.raises(LoraError) as err:
        table.resolve("v3")
    assert err.value.status == 404 and "v1, v2" in err.value.message
    assert table.without("v2").resolve("v1") is None
    assert "v2" in table.adapters  # tables are values: `without` made a new one
    assert table.view() == {"base": "v1", "adapters": [
        {"version": "v2", "name": "tiny-v1-v2-abc", "path": "/a", "rank": 8}]}
