"""Typed settings, loaded once and passed down.

Every command's settings are a pydantic model. Values come from, lowest first: the model's
defaults, a YAML settings file (`--config`), `VLLM_CANARY_*` environment variables, and the
flags the user actually gave. Unknown keys and bad values are a ConfigError naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from vllm_canary.errors import ConfigError

ENV_PREFIX = "VLLM_CANARY_"
S = TypeVar("S", bound=BaseModel)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: `line L, column C: problem`."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_yaml_mapping(path: Path, what: str = "settings file") -> dict[str, Any]:
    """A YAML file holding a mapping (empty → {}); anything else is a ConfigError naming
    `what` and the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return data


def _read_file(path: Path) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in read_yaml_mapping(path).items()}


def _from_env(model: type[BaseModel], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = env.get(prefix + name.upper())
        if raw is None:
            continue
        # Lists and mappings are written as YAML (`[a, b]`, `{k: v}`); scalars stay strings
        # and pydantic converts them, so "0.5" -> 0.5 and "true" -> True.
        origin = getattr(field.annotation, "__origin__", None)
        found[name] = yaml.safe_load(raw) if origin in (list, dict) else raw
    return found


def load_settings(
    model: type[S],
    flags: Mapping[str, Any],
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> S:
    """Merge defaults < file < environment < flags (None means "flag not given")."""
    env = os.environ if env is None else env
    if file is None and env.get(env_prefix + "CONFIG"):
        file = Path(env[env_prefix + "CONFIG"])
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_file(file))
    values.update(_from_env(model, env, env_prefix))
    values.update({k: v for k, v in flags.items() if v is not None and k in model.model_fields})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message says it all
            raise ConfigError(message) from None
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where!r}: {message}") from None
