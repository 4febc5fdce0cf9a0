"""CRD schemas for custom kinds (Istio, Argo Rollouts, prometheus-operator, Gateway API).

Looked up in `$VLLM_CANARY_CRD_DIR`, then `<repo>/../shared/schemas/crds`, then the copy
shipped in the package (src/vllm_canary/data/crds, upstream Apache-2.0 files, unmodified).
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ENV_VAR = "VLLM_CANARY_CRD_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "data" / "crds"
SHARED_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "schemas" / "crds"

Key = tuple[str, str]  # ("group/version", "Kind")


def schema_dir() -> Path:
    """Where the CRD YAML files are read from (see the module docstring for the order)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    if SHARED_DIR.is_dir():
        return SHARED_DIR
    return PACKAGE_DIR


def tighten(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy whose objects under `spec` reject unknown fields.

    The API server prunes unknown fields instead of rejecting them, so a typo would vanish
    silently; offline we would rather say so. Objects that preserve unknown fields stay open.
    """
    tight = copy.deepcopy(schema)
    spec = tight.get("properties", {}).get("spec")
    if isinstance(spec, dict):
        _close(spec)
    return tight


def _close(node: dict[str, Any]) -> None:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    props = node.get("properties")
    if isinstance(props, dict) and props and "additionalProperties" not in node:
        node["additionalProperties"] = False
    children: list[Any] = list(props.values()) if isinstance(props, dict) else []
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            children.append(node[key])
    for key in ("anyOf", "oneOf", "allOf"):
        children.extend(node.get(key) or [])
    for child in children:
        if isinstance(child, dict):
            _close(child)


@lru_cache(maxsize=4)
def load_index(directory: Path) -> dict[Key, dict[str, Any]]:
    """Every served version of every CRD in `directory`, tightened, keyed by (apiVersion, kind)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    index: dict[Key, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            for doc in yaml.load_all(fh, Loader=loader):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec.get("versions", []):
                    schema = (version.get("schema") or {}).get("openAPIV3Schema")
                    if schema and version.get("served", True):
                        key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                        index[key] = tighten(schema)
    return index


def groups(index: dict[Key, dict[str, Any]]) -> set[str]:
    """API groups the index covers; an unknown version of one of them is an error."""
    return {api.split("/")[0] for api, _ in index}
