"""Check Istio objects against the CRD schemas Istio publishes (when the file is at hand).

The API server prunes unknown fields instead of rejecting them; like `kubectl --validate=strict`
we add `additionalProperties: false` to every object schema under `spec`, so typos fail.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

from vllm_canary.gateway.istio import IstioObjects, RoutesError

CRD_FILE = "customresourcedefinitions.gen.yaml"
KINDS = {"VirtualService", "DestinationRule"}


def find_crds() -> Path | None:
    """$VLLM_CANARY_ISTIO_CRDS, else the packaged copy (vllm_canary/data/crds), else
    `shared/schemas/crds/` beside the working or source tree."""
    explicit = os.environ.get("VLLM_CANARY_ISTIO_CRDS")
    if explicit:
        return Path(explicit)
    packaged = Path(str(importlib.resources.files("vllm_canary") / "data" / "crds" / CRD_FILE))
    if packaged.is_file():
        return packaged
    for base in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = base / "shared" / "schemas" / "crds" / CRD_FILE
        if candidate.is_file():
            return candidate
    return None


def strict(schema: Any, under_spec: bool = False) -> Any:
    """A copy of `schema` where every object with `properties` rejects other keys."""
    if isinstance(schema, list):
        return [strict(s, under_spec) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v, under_spec) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: strict(v, under_spec or k == "spec")
                             for k, v in schema["properties"].items()}
        if (under_spec and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    return out


@functools.cache
def validators(path: Path) -> dict[tuple[str, str], Draft4Validator]:
    """(apiVersion, kind) -> strict validator, for VirtualService and DestinationRule."""
    found: dict[tuple[str, str], Draft4Validator] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 18k lines
    for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
        if not doc or doc.get("spec", {}).get("names", {}).get("kind") not in KINDS:
            continue
        kind, group = doc["spec"]["names"]["kind"], doc["spec"]["group"]
        for version in doc["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            found[(f"{group}/{version['name']}", kind)] = Draft4Validator(strict(schema))
    return found


def validate(objs: IstioObjects, path: Path) -> None:
    """Raise RoutesError for the first object that breaks its CRD schema."""
    table = validators(path)
    for doc in (*objs.virtualservices, *objs.destinationrules):
        validator = table.get((doc["apiVersion"], doc["kind"]))
        if validator is None:
            continue
        error = next(iter(sorted(validator.iter_errors(doc), key=lambda e: list(e.path))), None)
        if error is not None:
            meta = doc.get("metadata") or {}
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                            for p in error.absolute_path).lstrip(".") or "(object)"
            raise RoutesError(
                f"{doc['kind']} {meta.get('namespace', 'default')}/{meta.get('name')}: "
                f"{where}: {error.message} (Istio CRD schema)"
            )
