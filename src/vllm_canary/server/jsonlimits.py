"""Decoding JSON a client sent, with limits, so that no body can raise anything but one error.

orjson (RFC 8259, strict) does the parsing; on top of it the rules are explicit:

- invalid UTF-8, lone (unpaired) surrogate escapes such as `"\\ud800"`, `NaN`/`Infinity` and
  trailing data are refused (Python's `json` would accept the surrogate and the constants, and
  then fail later when the text is encoded or logged);
- a number that does not fit a double (an integer of 5,000 digits) is refused; integers
  beyond 64 bits are read as floats, so an integer field refuses them;
- nesting deeper than MAX_DEPTH arrays/objects is refused (orjson's own limit is 1024, which
  is deeper than the recursion limit of code that walks the result);
- a UTF-8 byte order mark before the document is skipped, as browsers and PowerShell send one.

Every refusal is a `JsonLimitError` (a ValueError) whose message says what was wrong and where.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 64  # nested arrays/objects; tool schemas in practice stay under 20
_BOM = b"\xef\xbb\xbf"


class JsonLimitError(ValueError):
    """The bytes are not JSON this server accepts; `str()` says why."""


def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `raw` under the rules above; linear in its size."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JsonLimitError(str(exc)) from None
    # Depth is at most the number of brackets; count them (fast) before walking anything.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(data, max_depth):
        raise JsonLimitError(f"nesting deeper than {max_depth} arrays/objects")
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep (iterative: no recursion limit)."""
    if not isinstance(data, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return limit < 1
