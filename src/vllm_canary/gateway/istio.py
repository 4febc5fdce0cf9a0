"""Load `networking.istio.io` VirtualService and DestinationRule objects into a RouteTable.

Accepts exactly what the Helm chart renders (other kinds in the same file are skipped). Every
field is checked: a typo, or an Istio field the local gateway cannot honour, is a RoutesError
naming the object and the field, never silently ignored.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import re2
import yaml

from vllm_canary.config import yaml_problem
from vllm_canary.errors import UserError
from vllm_canary.gateway import istio_fields as F
from vllm_canary.gateway.routing import StringMatch

GROUP = "networking.istio.io"
API_VERSIONS = {f"{GROUP}/{v}" for v in ("v1", "v1beta1", "v1alpha3")}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Envoy matches `regex` with RE2 (safe_regex, google_re2), and so do we: the same syntax
# (no lookaround, no backreferences) and linear time, so a client's 60 KiB header cannot
# make a pattern like (a+)+$ backtrack and stall the gateway, as Python's `re` would.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is our one-line load error, not absl's log
# Istio's validHeaderNameRegex (an RFC 7230 token), plus HTTP/2 pseudo headers.
_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+|:(method|scheme|authority|path|status)")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Istio pkg/config/labels: DNS-1123 labels (either case) and a first label with a wildcard.
_LABEL = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_WILD_LABEL = re.compile(rf"\*|(?:\*|\*-)?{_LABEL}")


def domain_problem(name: str, wildcard: bool = True) -> str | None:
    """Why Istio's ValidateWildcardDomain (or ValidateFQDN) refuses `name`, else None
    (pkg/config/validation/agent/validation.go)."""
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {name!r} too long (max 255)"
    first, _, rest = name.partition(".")
    labels = [first, *rest.split(".")] if rest or "." in name else [first]
    head = _WILD_LABEL if wildcard else _DNS_LABEL
    if len(first) > 63 or not head.fullmatch(first):
        return f"domain name {name!r} invalid (label {first!r} invalid)"
    if labels[-1].isdigit() and len(labels) > 1:
        return f"domain name {name!r} invalid (top level domain {labels[-1]!r} cannot be " \
               "all-numeric)"
    for i, label in enumerate(labels[1:], 1):
        if i == len(labels) - 1 and label == "":
            break  # a trailing dot, as in `istio.io.`
        if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
            return f"domain name {name!r} invalid (label {label!r} invalid)"
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
    """Seconds from a Go duration as the CRD's CEL `duration()` reads it: `1.5s`, `300ms`,
    `1m30s`, a sign allowed, `0` alone. Raises ValueError naming `where`."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{where}: must be a duration such as 10s or 250ms")
    body = text[1:] if text[0] in "+-" else text
    sign = -1.0 if text[0] == "-" else 1.0
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(f"{where}: {text!r} is not a duration such as 10s or 250ms")
    return sign * total


def check_duration(seconds: float, where: str) -> float:
    """Istio's ValidateDuration (pkg/config/validation/agent/validation.go): at least 1ms and
    a whole number of milliseconds. Raises ValueError naming `where`."""
    ms = seconds * 1000
    if ms < 1 - 1e-9:
        raise ValueError(f"{where}: duration must be greater than 1ms (Istio's validation)")
    if abs(ms - round(ms)) > 1e-6:
        raise ValueError(f"{where}: only durations to ms precision are supported "
                         "(Istio's validation)")
    return round(ms) / 1000


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

    def integer(self, node: Any, path: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> int:
        """A whole number (the CRD's int32 unless told); a float like 2.0 counts as whole."""
        if isinstance(node, bool) or not isinstance(node, int | float) or node != int(node):
            self.fail(path, "must be a whole number")
        if not lo <= node <= hi:
            self.fail(path, f"must be a whole number from {lo} to {hi}")
        return int(node)

    def duration(self, node: Any, path: str) -> float:
        """A duration that passes Istio's ValidateDuration (>= 1ms, whole milliseconds)."""
        try:
            return check_duration(parse_duration(node, path), path)
        except ValueError as exc:
            raise RoutesError(f"{self.label}: {exc}") from None

    def string_match(self, node: Any, path: str, where: str) -> StringMatch:
        """An Istio StringMatch checked as validateStringMatch does for `where` (uri, method,
        authority, headers, withoutHeaders, queryParams). `{}` (no match type) is a presence
        match, as Istio translates it (uri: prefix `/`, i.e. every path); an empty prefix is
        refused except for uri; regex `*` is a presence match in withoutHeaders only."""
        self.fields(node, path, F.STRING_MATCH)
        if not node:
            return StringMatch("prefix", "/") if where == "uri" else StringMatch("present")
        if len(node) != 1:
            self.fail(path, "takes exactly one of exact, prefix, regex")
        kind, value = next(iter(node.items()))
        value = self.string(value, f"{path}.{kind}")
        if kind == "prefix" and not value and where != "uri":
            self.fail(f"{path}.prefix", f"{where}: prefix string match should not be empty "
                      "(Istio's validation)")
        if kind != "regex":
            return StringMatch(kind, value)
        if value == "*" and where == "withoutHeaders":
            return StringMatch("present")
        if not value:
            self.fail(f"{path}.regex", f"{where}: regex string match should not be empty "
                      "(Istio's validation)")
        if len(value) > 1024:
            self.fail(f"{path}.regex", f"{where}: regex is too large, max length allowed is "
                      "1024 (Istio's validation)")
        try:
            return StringMatch("regex", value, re2.compile(value, options=_RE2_OPTIONS))
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) \
                else str(exc)
            self.fail(f"{path}.regex", f"does not compile as RE2 (Envoy's regex engine): "
                      f"{reason}")

    def string_map(self, node: Any, path: str, where: str) -> tuple[tuple[str, StringMatch], ...]:
        if not isinstance(node, dict):
            self.fail(path, "must be a mapping of name: match")
        out = []
        for k, v in node.items():
            name = str(k)
            if name.startswith("@request.auth.claims"):
                self.fail(f"{path}.{name}", "JWT claim matching is an Istio feature the local "
                          "gateway does not support")
            if where != "queryParams" and not _HEADER_NAME.fullmatch(name):
                self.fail(f"{path}.{name}", f"header name {name} is not a valid header name "
                          "(Istio's validation)")
            out.append((name.lower() if where != "queryParams" else name,
                        self.string_match(v or {}, f"{path}.{name}", where)))
        return tuple(out)

    def percentage(self, node: Any, path: str, fault: bool = False) -> float:
        """A Percent `{value}` in 0..100, as the percent Envoy gets (0.0001 steps); a fault's
        must also be 0 or at least 0.0001 (Istio's validatePercentage)."""
        self.fields(node, path, F.PERCENT)
        value = self.number(node.get("value", 0.0), f"{path}.value", 0, 100)
        if fault and 0 < value < 0.0001:
            self.fail(f"{path}.value", f"percentage {value} is neither 0.0, nor in range "
                      "[0.0001, 100.0] (Istio's validation)")
        # Istio sends Envoy uint32(value * 10000) per million (route.go
        # translatePercentToFractionalPercent): the float64 product is truncated.
        return int(value * 10000) / 10000
