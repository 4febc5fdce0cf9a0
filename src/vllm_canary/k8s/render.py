"""Render a chart offline with the real Helm v4 engine (PyPI `helm-python-sdk`, no binary)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vllm_canary.errors import UserError

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # what a namespace must be

# Roughly Helm's install order, so `render | kubectl apply -f -` creates dependencies first.
KIND_ORDER = (
    "Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap",
    "PersistentVolumeClaim", "Service", "Deployment", "Rollout", "StatefulSet",
    "HorizontalPodAutoscaler", "CronJob", "Job",
)


@dataclass(frozen=True)
class Manifest:
    """One rendered object and the template it came from."""

    source: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def ref(self) -> str:
        """`Kind/name`, how every message names the object."""
        return f"{self.kind or '?'}/{self.name or '?'}"


@dataclass(frozen=True)
class Rendered:
    """The chart's manifests plus the merged values they were rendered from."""

    manifests: list[Manifest]
    values: dict[str, Any]
    notes: str = ""


def _sort_key(m: Manifest) -> tuple[int, str, str]:
    rank = KIND_ORDER.index(m.kind) if m.kind in KIND_ORDER else len(KIND_ORDER)
    return rank, m.source, m.name


def split_documents(source: str, text: str) -> list[Manifest]:
    """The non-empty YAML documents of one rendered template."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise UserError(f"{source} renders to invalid YAML: {exc}") from None
    found = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise UserError(f"{source} renders a document that is not a mapping")
        found.append(Manifest(source, doc))
    return found


def render_chart(
    chart: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "vllm",
    namespace: str = "default",
) -> Rendered:
    """Load the chart, check values against values.schema.json, render every template."""
    import helm_python as helm

    if not (chart / "Chart.yaml").is_file() and not chart.is_file():
        raise UserError(f"{chart} is not a Helm chart (no Chart.yaml); pass the chart folder")
    try:
        helm.validate_release_name(release)
    except helm.HelmError as exc:
        raise UserError(f"bad release name {release!r}: {exc}") from None
    if not DNS_LABEL.fullmatch(namespace):
        raise UserError(f"bad namespace {namespace!r}: lower-case letters, digits and '-', "
                        "at most 63, starting and ending with a letter or digit")
    try:
        with helm.Chart.load(chart) as loaded:
            loaded.validate_schema(values or {})
            merged = loaded.merge_values(values or {})
            files = loaded.render(values or {}, name=release, namespace=namespace,
                                  is_install=True)
    except helm.HelmValuesError as exc:
        raise UserError(f"values do not fit the chart's values.schema.json: {_one_line(exc)}") \
            from None
    except helm.HelmError as exc:
        raise UserError(f"helm could not render {chart}: {_one_line(exc)}") from None
    manifests: list[Manifest] = []
    notes = ""
    for source, text in sorted(files.items()):
        if source.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend(split_documents(source, text))
    return Rendered(sorted(manifests, key=_sort_key), merged, notes)


def lint(
    chart: Path, values: dict[str, Any] | None = None, namespace: str = "default"
) -> list[str]:
    """`helm lint --strict` findings (warnings and errors) as `path: message` lines."""
    import helm_python as helm

    try:
        report = helm.lint(chart, values or {}, strict=True, namespace=namespace)
    except helm.HelmError as exc:
        raise UserError(f"helm lint could not run on {chart}: {_one_line(exc)}") from None
    found = [f"{m.get('path', '')}: {_one_line(m.get('error', ''))}"
             for m in report.get("messages") or [] if int(m.get("severity", 0)) >= 2]
    seen = " ".join(found)
    errors = [_one_line(e) for e in report.get("errors") or []]
    return found + [e for e in errors if e not in seen]


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (dashboards, rules, scripts) as `|` blocks, as Helm's are."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(rendered: Rendered) -> str:
    """A multi-document stream like `helm template`, with `# Source:` comments."""
    parts = []
    for m in rendered.manifests:
        body = yaml.dump(m.obj, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                         width=100)
        parts.append(f"---\n# Source: {m.source}\n{body}")
    return "".join(parts)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
