"""Load `networking.istio.io` VirtualService and DestinationRule objects into a RouteTable.

Accepts exactly what the Helm chart renders (other kinds in the same file are skipped). Every
field is checked: a typo, or an Istio field the local gateway cannot honour, is a RoutesError
naming the object and the field, never silently ignored.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from vllm_canary.config import yaml_problem
from vllm_canary.errors import UserError
from vllm_canary.gateway import istio_fields as F
from vllm_canary.gateway.routing import StringMatch

GROUP = "networking.istio.io"
API_VERSIONS = {f"{GROUP}/{v}" for v in ("v1", "v1beta1", "v1alpha3")}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Python's `re` accepts these but RE2 (Envoy) rejects them: refuse them so both agree.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")


class RoutesError(UserError):
    """A routes file the gateway cannot execute; the message names the object and the field."""


@dataclass
class IstioObjects:
    """The raw objects (plain dicts, as Kubernetes would store them)."""

    virtualservices: list[dict[str, Any]]
    destinationrules: list[dict[str, Any]]

    def copy(self) -> IstioObjects:
        return IstioObjects(copy.deepcopy(self.virtualservices),
                            copy.deepcopy(self.destinationrules))


def parse_documents(text: str, source: str = "routes") -> IstioObjects:
    """Split a multi-document YAML stream into VirtualServices and DestinationRules."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise RoutesError(f"{source} is not valid YAML: {yaml_problem(exc)}") from None
    items: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items.extend(doc.get("items") or [])
        else:
            items.append(doc)
    objs = IstioObjects([], [])
    for i, doc in enumerate(items):
        if not isinstance(doc, dict) or "kind" not in doc:
            raise RoutesError(f"{source}: document {i + 1} is not a Kubernetes object")
        if doc.get("apiVersion") in API_VERSIONS and doc["kind"] == "VirtualService":
            objs.virtualservices.append(doc)
        elif doc.get("apiVersion") in API_VERSIONS and doc["kind"] == "DestinationRule":
            objs.destinationrules.append(doc)
    if not objs.virtualservices:
        raise RoutesError(f"{source} holds no {GROUP} VirtualService")
    return objs


def load_file(path: Path) -> IstioObjects:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"cannot read routes file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RoutesError(f"routes file {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_documents(text, str(path))


def parse_duration(text: Any, where: str) -> float:
    """Seconds from an Istio/Go duration such as `1.5s`, `300ms` or `1m30s`."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{where}: must be a duration such as 10s or 250ms")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"{where}: {text!r} is not a duration such as 10s or 250ms")
    return total


class Checker:
    """Field checking for one object, so every error names `Kind namespace/name: path`."""

    def __init__(self, doc: dict[str, Any]) -> None:
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict) or not meta.get("name"):
            raise RoutesError(f"{doc.get('kind')} without metadata.name")
        self.namespace = str(meta.get("namespace") or "default")
        self.name = str(meta["name"])
        self.label = f"{doc['kind']} {self.namespace}/{self.name}"

    def fail(self, path: str, message: str) -> NoReturn:
        raise RoutesError(f"{self.label}: {path}: {message}")

    def fields(self, node: Any, path: str, allowed: frozenset[str],
               istio: frozenset[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(node, dict):
            self.fail(path, "must be a mapping")
        for key in node:
            if key in allowed:
                continue
            if key in istio:
                self.fail(f"{path}.{key}", "is an Istio field the local gateway does not "
                          "support; remove it, or run this routing on Istio")
            self.fail(f"{path}.{key}", "unknown field (not in the Istio schema; a typo?)")
        return node

    def items(self, node: Any, path: str) -> list[Any]:
        if node is None:
            return []
        if not isinstance(node, list):
            self.fail(path, "must be a list")
        return node

    def string(self, node: Any, path: str) -> str:
        if not isinstance(node, str):
            self.fail(path, "must be a string")
        return node

    def number(self, node: Any, path: str, lo: float, hi: float) -> float:
        if isinstance(node, bool) or not isinstance(node, int | float) or not lo <= node <= hi:
            self.fail(path, f"must be a number from {lo:g} to {hi:g}")
        return float(node)

    def duration(self, node: Any, path: str) -> float:
        try:
            return parse_duration(node, path)
        except ValueError as exc:
            raise RoutesError(f"{self.label}: {exc}") from None

    def string_match(self, node: Any, path: str, allow_present: bool = False) -> StringMatch:
        self.fields(node, path, F.STRING_MATCH)
        if not node:
            if allow_present:
                return StringMatch("present")
            self.fail(path, "needs one of exact, prefix, regex")
        if len(node) != 1:
            self.fail(path, "takes exactly one of exact, prefix, regex")
        kind, value = next(iter(node.items()))
        value = self.string(value, f"{path}.{kind}")
        if kind != "regex":
            return StringMatch(kind, value)
        if _NOT_RE2.search(value):
            self.fail(f"{path}.regex", "uses lookaround or backreferences, which RE2 lacks")
        try:
            return StringMatch("regex", value, re.compile(value))
        except re.error as exc:
            self.fail(f"{path}.regex", f"does not compile: {exc}")

    def string_map(
        self, node: Any, path: str, present: bool
    ) -> tuple[tuple[str, StringMatch], ...]:
        if not isinstance(node, dict):
            self.fail(path, "must be a mapping of name: match")
        return tuple((str(k).lower(), self.string_match(v or {}, f"{path}.{k}", present))
                     for k, v in node.items())

    def percentage(self, node: Any, path: str) -> float:
        self.fields(node, path, F.PERCENT)
        return self.number(node.get("value", 0.0), f"{path}.value", 0, 100)
