"""Routes for versions that share pods (LoRA adapters), as the chart renders them: the
version's DestinationRule subset selects its base's pods, and each route destination of it sets
`x-canary-version: <version>` (VirtualService `headers.request.set`), which the base's front
maps to the adapter; destinations of other versions remove a client's own header.

`vllm-canary up --lora-v2` writes such a routes file from the chart's; `lora load` adds a
version to it (weight 0, so `routes set-weight` can give it traffic); `lora unload` takes it
out once it has no weight. Pure functions over the parsed YAML documents, plus file helpers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from vllm_canary import atomic
from vllm_canary.errors import UserError
from vllm_canary.server.lora import VERSION_HEADER

Doc = dict[str, Any]


def _kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]


def _headers_for(version: str, adapters: set[str]) -> Doc:
    if version in adapters:
        return {"request": {"set": {VERSION_HEADER: version}}}
    return {"request": {"remove": [VERSION_HEADER]}}


def _edit_destination(dest: Doc, adapters: set[str]) -> None:
    subset = (dest.get("destination") or {}).get("subset")
    if subset is None:
        return
    headers = dest.setdefault("headers", {})
    request = headers.setdefault("request", {})
    wanted = _headers_for(subset, adapters)["request"]
    if "set" in wanted:
        request.setdefault("set", {}).update(wanted["set"])
        if VERSION_HEADER in request.get("remove", []):
            request["remove"] = [h for h in request["remove"] if h != VERSION_HEADER]
            if not request["remove"]:
                request.pop("remove")
    else:
        (request.get("set") or {}).pop(VERSION_HEADER, None)
        if not request.get("set"):
            request.pop("set", None)
        if VERSION_HEADER not in request.setdefault("remove", []):
            request["remove"].append(VERSION_HEADER)


def share_pods(docs: list[Doc], adapters: dict[str, str],
               known: set[str] | frozenset[str] = frozenset()) -> list[Doc]:
    """A copy of `docs` where each version in `adapters` ({version: base}) is served by its
    base's pods, as described above (`known`: adapter versions already so). Raises UserError
    for a subset the DestinationRule lacks or a mirror to an adapter version (a mirror cannot
    set the header)."""
    out = copy.deepcopy(docs)
    names = set(adapters) | set(known)
    for dr in _kind(out, "DestinationRule"):
        subsets = {s.get("name"): s for s in dr.get("spec", {}).get("subsets", [])}
        for version, base in adapters.items():
            if base not in subsets:
                raise UserError(f"routes: DestinationRule has no subset {base!r} for the base "
                                f"of LoRA version {version}")
            base_labels = dict(subsets[base].get("labels") or {})
            if version in subsets:
                subsets[version]["labels"] = base_labels
            else:
                dr["spec"]["subsets"].append({"name": version, "labels": base_labels})
    for vs in _kind(out, "VirtualService"):
        for route in vs.get("spec", {}).get("http", []):
            mirror = (route.get("mirror") or {}).get("subset")
            if mirror in names:
                raise UserError(f"routes: route {route.get('name')!r} mirrors to LoRA version "
                                f"{mirror}; a mirror cannot set {VERSION_HEADER}")
            for dest in route.get("route", []):
                _edit_destination(dest, names)
    return out


def add_version(docs: list[Doc], version: str, base: str) -> list[Doc]:
    """`docs` with adapter `version` added: its subset (the base's pods) and, on every route
    with more than one destination, a destination with weight 0 beside the base's."""
    out = copy.deepcopy(docs)
    for vs in _kind(out, "VirtualService"):
        for route in vs.get("spec", {}).get("http", []):
            dests = route.get("route", [])
            if len(dests) < 2 or any((d.get("destination") or {}).get("subset") == version
                                     for d in dests):
                continue
            base_dest = next((d for d in dests
                              if (d.get("destination") or {}).get("subset") == base), None)
            if base_dest is None:
                continue
            dests.append({"destination": {**base_dest["destination"], "subset": version},
                          "weight": 0})
    return share_pods(out, {version: base}, set(adapters_in(out)))


def remove_version(docs: list[Doc], version: str, repoint: str | None = None) -> list[Doc]:
    """`docs` without adapter `version`: its destinations (which must have weight 0) and its
    subset. Raises UserError while a route still gives it weight, or routes only to it
    (unless `repoint` names the version such a route goes to instead, e.g. the base)."""
    out = copy.deepcopy(docs)
    for vs in _kind(out, "VirtualService"):
        for route in vs.get("spec", {}).get("http", []):
            dests = route.get("route", [])
            mine = [d for d in dests if (d.get("destination") or {}).get("subset") == version]
            if not mine:
                continue
            if len(dests) == 1 and repoint is not None:
                dests[0]["destination"]["subset"] = repoint
                _edit_destination(dests[0], adapters_in(out) - {version})
                continue
            if len(dests) == 1:
                raise UserError(f"route {route.get('name')!r} sends all its traffic to "
                                f"{version}; change that route first")
            weight = sum(int(d.get("weight", 0) or 0) for d in mine)
            if weight > 0:
                raise UserError(f"{version} still has weight {weight} on route "
                                f"{route.get('name')!r}; give it 0 first (vllm-canary routes "
                                "set-weight), or abort the rollout")
            route["route"] = [d for d in dests if d not in mine]
    for dr in _kind(out, "DestinationRule"):
        spec = dr.get("spec", {})
        spec["subsets"] = [s for s in spec.get("subsets", []) if s.get("name") != version]
    return out


def adapters_in(docs: list[Doc]) -> set[str]:
    """The versions some route destination sets the version header for."""
    found: set[str] = set()
    for vs in _kind(docs, "VirtualService"):
        for route in vs.get("spec", {}).get("http", []):
            for dest in route.get("route", []):
                set_ = ((dest.get("headers") or {}).get("request") or {}).get("set") or {}
                if VERSION_HEADER in set_:
                    found.add(str(set_[VERSION_HEADER]))
    return found


def read(path: Path) -> list[Doc]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read routes file {path}: {exc}") from None


def write(path: Path, docs: list[Doc], header: str = "") -> Path:
    """Write the documents atomically (the gateway's watcher sees the old or the new file)."""
    text = header + yaml.safe_dump_all(docs, sort_keys=False)
    atomic.write_text(path, text)
    return path
