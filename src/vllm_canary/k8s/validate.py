"""Validate rendered manifests offline: built-in kinds with `kubernetes-validate` (strict,
a missing schema is a failure) and custom kinds against their CRD schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from vllm_canary.errors import UserError
from vllm_canary.k8s import crds
from vllm_canary.k8s.render import Manifest


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object, at one path inside it."""

    ref: str
    source: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.ref} ({self.source}): {self.path or '<root>'}: {self.message}"


def json_path(parts: Any) -> str:
    """`spec.template.spec.containers[0].ports` from a jsonschema error path."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def default_kube_version() -> str:
    import kubernetes_validate

    return str(kubernetes_validate.latest_version())


def check_kube_version(version: str) -> str:
    """`version` (`1.30`, `v1.30.2`) if kubernetes-validate has schemas for it, else a UserError
    naming the range it knows (the library itself fails with an IndexError below its oldest)."""
    from kubernetes_validate import utils

    known = [tuple(int(x) for x in v.split(".")[:2]) for v in utils.all_versions()]
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", version)
    oldest, newest = ".".join(map(str, known[0])), ".".join(map(str, known[-1]))
    if not match or not known[0] <= (int(match[1]), int(match[2])) <= known[-1]:
        raise UserError(f"kubernetes-validate has no schemas for --kube-version {version}: "
                        f"use {oldest} to {newest}")
    return version


def _builtin_errors(obj: dict[str, Any], kube_version: str) -> list[tuple[str, str]]:
    import kubernetes_validate
    from kubernetes_validate import utils

    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
        return []
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [("", f"{exc.message} (strict: a kind without a schema cannot be checked; "
                     "fix apiVersion/kind)")]
    except kubernetes_validate.ValidationError as first:
        # The library stops at the first error; list them all with the same schema.
        return _all_builtin_errors(obj, first, utils)


def _all_builtin_errors(obj: dict[str, Any], first: Any, utils: Any) -> list[tuple[str, str]]:
    from referencing import Registry, Resource

    try:
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
        folder = f"kubernetes-json-schema/v{first.version}.0-local-strict"
        schema = utils.schema_contents(f"{folder}/{obj['kind'].lower()}-{api}.json", first.version)
        defs = utils.schema_contents(f"{folder}/_definitions.json", first.version)
        registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        found = [(json_path(e.path), e.message) for e in errors]
    except Exception:  # the first error is still right; the listing is a convenience
        found = []
    return found or [(json_path(first.path), first.message)]


def _custom_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, str]]:
    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    return [(json_path(e.path), e.message) for e in errors]


def validate_manifest(
    m: Manifest, *, kube_version: str | None = None, crd_dir: Path | None = None
) -> list[Problem]:
    """Every schema problem of one object (empty when it is valid)."""
    obj = m.obj
    api, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        return [Problem(m.ref, m.source, "", "apiVersion and kind are required")]
    if not (obj.get("metadata") or {}).get("name"):
        return [Problem(m.ref, m.source, "metadata.name", "a name is required")]
    index = crds.load_index(crd_dir or crds.schema_dir())
    group = api.split("/")[0] if "/" in api else ""
    schema = index.get((api, kind))
    if schema is not None:
        errors = _custom_errors(obj, schema)
    elif group in crds.groups(index):
        known = ", ".join(sorted(f"{a} {k}" for a, k in index
                                 if a.startswith(group + "/") and k == kind))
        errors = [("apiVersion", f"no CRD schema for {kind} in {api}; "
                   + (f"known: {known}" if known else f"{group} has no kind {kind}"))]
    else:
        errors = _builtin_errors(obj, kube_version or default_kube_version())
    return [Problem(m.ref, m.source, path, msg) for path, msg in errors]


def validate_all(
    manifests: list[Manifest], *, kube_version: str | None = None, crd_dir: Path | None = None
) -> list[Problem]:
    """Problems of every object, in manifest order."""
    problems: list[Problem] = []
    for m in manifests:
        problems.extend(validate_manifest(m, kube_version=kube_version, crd_dir=crd_dir))
    return problems
