"""Deterministic JSON for the simulator's structured outputs (`response_format`) and tool calls.

`schema_value(schema, rng, words)` builds a value that satisfies a JSON Schema, drawing
strings, numbers and choices from `rng`, so the same (version, prompt, seed) gives the same
JSON. It knows the keywords that shape a value (type, properties, required, items,
prefixItems, enum, const, anyOf/oneOf, $ref into $defs, string and number bounds,
min/maxItems, format) and ignores annotations (title, description, default, ...).
`check_schema` refuses, before any generation, a schema that is not valid JSON Schema or that
uses a keyword the simulator cannot satisfy (e.g. `pattern`, `not`): the caller turns
`SchemaError` into a 400 that names the keyword and where it is. Every value is checked
against the schema with `jsonschema` before it is returned.
"""

from __future__ import annotations

import math
import random
from typing import Any

import jsonschema

# Keywords that carry no constraint on the value.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "strict", "nullable", "name", "$defs",
    "definitions",
})
_SHAPING = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "minItems", "maxItems", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "format", "uniqueItems",
})
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "00:00:00Z",
    "email": "user@example.com", "uri": "https://example.com/", "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000", "hostname": "example.com",
    "ipv4": "192.0.2.1", "ipv6": "2001:db8::1",
}
_MAX_DEPTH = 24
_MAX_NODES = 2000  # values in one answer: bounds the work a (recursive) schema can ask for
_MAX_ITEMS = 256  # minItems the simulator will fill
_MAX_LENGTH = 4096  # minLength it will fill


class SchemaError(ValueError):
    """A schema the simulator cannot generate for; the message says which part and why."""


def check_schema(schema: Any, where: str = "schema") -> None:
    """Raise SchemaError unless `schema` is a valid JSON Schema built only from keywords the
    simulator satisfies."""
    if not isinstance(schema, dict | bool):
        raise SchemaError(f"{where} must be a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaError(f"{where} is not a valid JSON Schema at {path}: {exc.message}") from None
    _check_keywords(schema, where)


def _check_keywords(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        return
    for key, sub in schema.items():
        if key in _ANNOTATIONS - {"$defs", "definitions"}:
            continue
        if key not in _SHAPING and key not in ("$defs", "definitions"):
            raise SchemaError(
                f"the sim engine cannot generate JSON for the schema keyword '{key}' (at "
                f"{where}); remove it, or serve a real model (--engine vllm)")
        if key in ("properties", "$defs", "definitions"):
            for name, child in (sub or {}).items():
                _check_keywords(child, f"{where}.{key}.{name}")
        elif key in ("items", "additionalProperties") and isinstance(sub, dict):
            _check_keywords(sub, f"{where}.{key}")
        elif key in ("prefixItems", "anyOf", "oneOf"):
            for i, child in enumerate(sub):
                _check_keywords(child, f"{where}.{key}[{i}]")
        elif key == "$ref" and not str(sub).startswith("#"):
            raise SchemaError(f"only local $ref ('#/...') is supported (at {where}), got {sub!r}")


def schema_value(schema: dict[str, Any] | bool, rng: random.Random, words: list[str]) -> Any:
    """A value that validates against `schema` (checked with jsonschema); SchemaError if the
    simulator's choice does not (e.g. oneOf branches that overlap)."""
    root = schema if isinstance(schema, dict) else {}
    try:
        value = _Builder(root, rng, words).value(root, 0)
        errors = sorted(jsonschema.validators.validator_for(root)(root).iter_errors(value),
                        key=lambda e: [str(p) for p in e.absolute_path])
    except SchemaError:
        raise
    except Exception as exc:  # odd bounds (overflow), refs jsonschema cannot resolve, ...
        raise SchemaError(f"the sim engine could not generate JSON for this schema: "
                          f"{type(exc).__name__}: {exc}") from None
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise SchemaError(f"the sim engine could not satisfy the schema at {path}: "
                          f"{first.message}")
    return value


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"$ref {ref!r} does not resolve in the schema")
        node = node[part]
    if not isinstance(node, dict):
        raise SchemaError(f"$ref {ref!r} does not point to a schema object")
    return node


class _Builder:
    """Builds one value; counts the values made so a schema cannot ask for unbounded work."""

    def __init__(self, root: dict[str, Any], rng: random.Random, words: list[str]) -> None:
        self.root, self.rng, self.words, self.nodes = root, rng, words, 0

    def value(self, s: dict[str, Any], depth: int) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise SchemaError(f"the schema asks for more than {_MAX_NODES} values; the sim "
                              "engine answers smaller JSON")
        if depth > _MAX_DEPTH:
            raise SchemaError(
                f"the schema nests deeper than {_MAX_DEPTH} levels (a recursive $ref?)")
        rng = self.rng
        if "$ref" in s:
            return self.value(_resolve(s["$ref"], self.root), depth + 1)
        if "const" in s:
            return s["const"]
        if "enum" in s:
            if not s["enum"]:
                raise SchemaError("an empty enum allows no value")
            return rng.choice(s["enum"])
        for key in ("anyOf", "oneOf"):
            if s.get(key):
                return self.value(s[key][0], depth + 1)
        kind = s.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = ("object" if "properties" in s else "array" if "items" in s or
                    "prefixItems" in s else "string")
        if kind == "object":
            props = dict(s.get("properties") or {})
            extra = s.get("additionalProperties")
            for name in s.get("required") or ():  # required but not described
                props.setdefault(name, extra if isinstance(extra, dict) else {})
            return {name: self.value(sub if isinstance(sub, dict) else {}, depth + 1)
                    for name, sub in props.items()}
        if kind == "array":
            return self.array(s, depth)
        if kind == "string":
            return _string(s, rng, self.words)
        if kind in ("integer", "number"):
            return _number(s, rng, integer=kind == "integer")
        if kind == "boolean":
            return rng.random() < 0.5
        return None

    def array(self, s: dict[str, Any], depth: int) -> list[Any]:
        prefix = s.get("prefixItems") or []
        low = max(int(s.get("minItems", 0)), len(prefix))
        if low > _MAX_ITEMS:
            raise SchemaError(f"minItems {low} is more than the sim engine fills "
                              f"({_MAX_ITEMS})")
        count = max(low, min(2, int(s.get("maxItems", 2))))
        items = s.get("items") if isinstance(s.get("items"), dict) else {}
        out = [self.value(prefix[i] if i < len(prefix) else items, depth + 1)
               for i in range(count)]
        if s.get("uniqueItems"):
            out = [f"{v} {i}" if isinstance(v, str) else v for i, v in enumerate(out)]
        return out


def _string(s: dict[str, Any], rng: random.Random, words: list[str]) -> str:
    if s.get("format") in _FORMATS:
        return _FORMATS[s["format"]]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
    if int(s.get("minLength", 0)) > _MAX_LENGTH:
        raise SchemaError(f"minLength {s['minLength']} is more than the sim engine fills "
                          f"({_MAX_LENGTH})")
    while len(text) < int(s.get("minLength", 0)):
        text += " " + rng.choice(words)
    return text[: int(s.get("maxLength", len(text)))]


def _number(s: dict[str, Any], rng: random.Random, *, integer: bool) -> int | float:
    lo_ex, hi_ex = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    low, high = s.get("minimum", lo_ex), s.get("maximum", hi_ex)
    if low is None and high is None:
        low, high = 0, 100
    elif low is None:
        low = high - 100
    elif high is None:
        high = low + 100
    unit = s.get("multipleOf") or (1 if integer else None)
    if unit:
        first, last = math.ceil(low / unit), math.floor(high / unit)
        if lo_ex is not None and first * unit <= lo_ex:
            first += 1
        if hi_ex is not None and last * unit >= hi_ex:
            last -= 1
        value = rng.randint(first, max(first, last)) * unit
        return int(value) if float(value).is_integer() else value
    value = round(rng.uniform(low, high), 2)
    if (lo_ex is not None and value <= lo_ex) or (hi_ex is not None and value >= hi_ex):
        value = (low + high) / 2
    return value
