"""Helm-style values: `-f` files and `--set` expressions merged in order, later wins."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vllm_canary.config import read_yaml_mapping
from vllm_canary.errors import UserError


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings recursively like `helm -f a -f b`: maps merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def read_values_file(path: Path) -> dict[str, Any]:
    """One `-f` file; a missing, unreadable or non-mapping file is a UserError."""
    return read_yaml_mapping(path, "values file")


def parse_set(expression: str) -> dict[str, Any]:
    """A `--set a.b=c,d=e` expression, parsed by Helm's own parser."""
    import helm_python as helm

    try:
        return helm.parse_set_string(expression)
    except helm.HelmError as exc:
        raise UserError(f"bad --set {expression!r}: {exc}") from None


def collect(files: Iterable[Path] = (), sets: Iterable[str] = ()) -> dict[str, Any]:
    """Values from files, then `--set` expressions, in command-line order within each kind."""
    values: dict[str, Any] = {}
    for path in files:
        values = deep_merge(values, read_values_file(path))
    sets = [s for s in sets if s]
    if sets:
        # Helm parses every --set into one map in order, so list indexes from several
        # flags combine; joining them with commas does exactly that.
        values = deep_merge(values, parse_set(",".join(sets)))
    return values
