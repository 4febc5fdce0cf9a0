"""Versions that share pods: a LoRA adapter served by another version's vLLM.

The route of an adapter version goes to the base version's pods and sets the request header
`x-canary-version: <version>` (VirtualService `headers.request.set`). The base's front maps that
header to the adapter's served name and rewrites the request's `model` field to it (the only
change it ever makes to a request body), then labels metrics and the request log with that
version. Adapters are loaded into the running vLLM through its `/v1/load_lora_adapter`
(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, `--enable-lora`; shared notes "vllm-lora").

Pure parts (tested without a server): `parse_spec`, `read_adapter`, `default_name`,
`rewrite_model`, `LoraTable`. I/O: `LoraManager` (talks to vLLM's admin routes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from vllm_canary.errors import UserError
from vllm_canary.server.engines.vllm import flag_value
from vllm_canary.server.settings import VERSION_PATTERN

# The request header the VirtualService sets on an adapter version's route.
VERSION_HEADER = "x-canary-version"
# The environment variable vLLM reads before it accepts /v1/load_lora_adapter (vLLM 0.32:
# vllm/envs.py VLLM_ALLOW_RUNTIME_LORA_UPDATING).
RUNTIME_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# vLLM 0.32 accepts only these --max-lora-rank values (vllm/config/lora.py MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM routes whose request body names the model in a top-level `model` field
# (vllm/entrypoints/openai/**/protocol.py). Other paths are relayed untouched.
MODEL_PATHS = frozenset("""
/v1/completions /v1/chat/completions /v1/responses /v1/embeddings /v1/messages
/v1/messages/count_tokens /v1/score /v1/rerank /v2/rerank /rerank /score /classify /pooling
/tokenize /detokenize /v1/completions/render /v1/chat/completions/render
""".split())

_VERSION = re.compile(VERSION_PATTERN)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # unrolled: linear, fast
_WS = re.compile(rb"[ \t\n\r]*")
_SCALAR_END = re.compile(rb"[,}\] \t\n\r]")
# Everything up to the next bracket outside a string.
_FILL = re.compile(rb'(?:[^"\[\]{}]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.S)


class LoraError(Exception):
    """A LoRA operation refused; `status` is the HTTP status the admin API answers."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Adapter:
    """One adapter version: its served name in vLLM and the folder it was loaded from."""

    version: str
    name: str
    path: str
    rank: int = 0


# -- pure helpers -------------------------------------------------------------------------

def parse_spec(text: str) -> tuple[str, str | None, str]:
    """`VERSION=DIR` or `VERSION:NAME=DIR` -> (version, served name or None, dir).
    Raises UserError naming what is wrong."""
    head, sep, path = text.partition("=")
    version, _, name = head.partition(":")
    if not sep or not version or not path:
        raise UserError(f"--lora {text!r}: expected VERSION=DIR or VERSION:NAME=DIR, "
                        "e.g. v2=/models/my-adapter")
    if not _VERSION.match(version):
        raise UserError(f"--lora {text!r}: {version!r} is not a version label (letters, "
                        "digits, '-', '_', '.')")
    return version, name or None, path


def read_adapter(path: str | Path) -> tuple[Path, int]:
    """The absolute adapter folder and its rank `r`; a folder PEFT did not write is a
    UserError that says what is missing."""
    folder = Path(path).expanduser().resolve()
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"{folder} is not a LoRA adapter folder (no adapter_config.json); "
                        "give the folder PEFT's save_pretrained wrote") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{config_file} is not valid JSON") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise UserError(f"{config_file}: peft_type is not LORA")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"{config_file}: r (the rank) must be a positive whole number")
    if not any((folder / f).is_file() for f in ("adapter_model.safetensors",
                                                  "adapter_model.bin")):
        raise UserError(f"{folder} has no adapter_model.safetensors (or .bin)")
    return folder, rank


def max_rank_for(ranks: Iterable[int], floor: int = 16) -> int:
    """The smallest --max-lora-rank vLLM accepts that covers every rank (and `floor`)."""
    need = max([floor, *ranks])
    for allowed in LORA_RANKS:
        if allowed >= need:
            return allowed
    raise UserError(f"LoRA rank {need} is more than vLLM supports ({LORA_RANKS[-1]})")


def default_name(base: str, version: str, folder: Path) -> str:
    """`<base>-<version>-<8 hex of the adapter's files>`: a new name for new weights, so a
    reload never reuses another adapter's prefix-cache blocks (vllm-project/vllm#42125)."""
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name.startswith("adapter_"):
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return f"{base}-{version}-{digest.hexdigest()[:8]}"


def _skip_value(body: bytes, i: int) -> int:
    """The index just past the JSON value starting at `i` (the document is known valid)."""
    c = body[i:i + 1]
    if c == b'"':
        m = _STRING.match(body, i)
        assert m is not None
        return m.end()
    if c not in (b"{", b"["):
        m = _SCALAR_END.search(body, i)
        return m.start() if m else len(body)
    depth = 0
    while True:  # one C-level regex step per bracket: strings and the rest in between skipped
        i = _FILL.match(body, i).end()  # type: ignore[union-attr]
        depth += 1 if body[i:i + 1] in (b"{", b"[") else -1
        i += 1
        if depth == 0:
            return i


def model_spans(body: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """For a JSON object body: (index just past its `{`, the [start, end) byte spans of every
    top-level `model` value). None when the body is not one JSON object."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses but Python's json (and so vLLM) reads: ints over 64 bits
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(doc, dict):
        return None
    i = _WS.match(body, 0).end()  # type: ignore[union-attr]
    if body.startswith(b"\xef\xbb\xbf", i):
        i += 3
    open_at = i + 1
    i = open_at
    spans = []
    while True:
        i = _WS.match(body, i).end()  # type: ignore[union-attr]
        if body[i:i + 1] == b"}":
            return open_at, spans
        key = _STRING.match(body, i)
        assert key is not None
        i = _WS.match(body, key.end()).end() + 1  # type: ignore[union-attr]  # past ':'
        i = _WS.match(body, i).end()  # type: ignore[union-attr]
        end = _skip_value(body, i)
        if orjson.loads(key.group()) == "model":
            spans.append((i, end))
        i = _WS.match(body, end).end()  # type: ignore[union-attr]
        if body[i:i + 1] == b",":
            i += 1


def rewrite_model(body: bytes, served_name: str) -> bytes:
    """`body` with its top-level `model` value(s) replaced by `served_name` (inserted first
    when absent); every other byte stays as it was. A body that is not one JSON object is
    returned unchanged (vLLM then answers it with its own 400)."""
    found = model_spans(body)
    if found is None:
        return body
    open_at, spans = found
    value = orjson.dumps(served_name)
    if not spans:
        rest = body[open_at:]
        empty = rest.strip(b" \t\n\r").startswith(b"}")
        return body[:open_at] + b'"model":' + value + (b"" if empty else b",") + rest
    out = bytearray(body)
    for start, end in reversed(spans):
        out[start:end] = value
    return bytes(out)


class LoraTable:
    """Which adapter a request's version header selects. Immutable per change: `with_`
    and `without` return new tables, so a reader never sees half an update."""

    def __init__(self, base_version: str, adapters: Mapping[str, Adapter] | None = None) -> None:
        self.base_version = base_version
        self.adapters: dict[str, Adapter] = dict(adapters or {})

    def with_(self, adapter: Adapter) -> LoraTable:
        return LoraTable(self.base_version, {**self.adapters, adapter.version: adapter})

    def without(self, version: str) -> LoraTable:
        return LoraTable(self.base_version,
                         {v: a for v, a in self.adapters.items() if v != version})

    def resolve(self, header: str | None) -> Adapter | None:
        """The adapter a request asks for by `x-canary-version`; None for the base (no
        header, or the base's own version). Raises LoraError(404) for a version that is not
        loaded here (a route still pointing at an unloaded adapter)."""
        if header is None or not header.strip() or header.strip() == self.base_version:
            return None
        version = header.strip()
        adapter = self.adapters.get(version)
        if adapter is None:
            known = ", ".join([self.base_version, *sorted(self.adapters)])
            raise LoraError(404, f"version {version!r} ({VERSION_HEADER}) is not served here "
                            f"(this server has: {known}); load it with `vllm-canary lora load`",
                            VERSION_HEADER)
        return adapter

    def view(self) -> dict[str, Any]:
        return {"base": self.base_version,
                "adapters": [asdict(a) for a in sorted(self.adapters.values(),
                                                       key=lambda a: a.version)]}


@dataclass(frozen=True)
class StartAdapter:
    """An adapter given with `--lora` (checked before vLLM starts, loaded once it is up)."""

    version: str
    name: str | None
    path: Path
    rank: int


@dataclass(frozen=True)
class LoraPlan:
    """What serving LoRA versions needs from the vLLM child: its extra arguments and
    environment, the largest rank it takes, and the adapters to load at start."""

    adapters: tuple[StartAdapter, ...]
    max_rank: int
    child_args: list[str]
    env: dict[str, str]


def lora_plan(settings: Any) -> LoraPlan:
    """The plan for ServeSettings with `lora`/`enable_lora`: `--enable-lora`, `--max-lora-rank`
    (what the adapters need, at least 16, unless given) and `--max-loras` are added to the
    child's arguments where the user did not give them after `--`. UserError for a bad
    --lora spec or folder, a version given twice or the base's own version."""
    adapters: list[StartAdapter] = []
    for text in settings.lora:
        version, name, path = parse_spec(text)
        if version == settings.version or any(a.version == version for a in adapters):
            raise UserError(f"--lora {text!r}: version {version} is "
                            + ("this server's own" if version == settings.version else
                               "given twice"))
        folder, rank = read_adapter(path)
        adapters.append(StartAdapter(version, name, folder, rank))
    args = list(settings.vllm_args)
    given = flag_value(args, "--max-lora-rank")
    try:
        max_rank = int(given) if given else (settings.max_lora_rank or
                                             max_rank_for(a.rank for a in adapters))
    except ValueError:
        raise UserError(f"--max-lora-rank {given!r} is not a number") from None
    if max_rank not in LORA_RANKS:
        raise UserError(f"--max-lora-rank {max_rank}: vLLM takes one of "
                        f"{', '.join(map(str, LORA_RANKS))}")
    too_big = [a for a in adapters if a.rank > max_rank]
    if too_big:
        raise UserError(f"adapter {too_big[0].path} has rank {too_big[0].rank}, more than "
                        f"--max-lora-rank {max_rank}")
    if "--enable-lora" not in args:
        args.append("--enable-lora")
    if given is None:
        args += ["--max-lora-rank", str(max_rank)]
    if flag_value(args, "--max-loras") is None:
        args += ["--max-loras", str(settings.max_loras)]
    return LoraPlan(tuple(adapters), max_rank, args, dict(RUNTIME_ENV))


# -- I/O: vLLM's runtime LoRA routes ------------------------------------------------------

class LoraManager:
    """Loads and unloads adapters in one running vLLM and keeps the LoraTable the front reads.

    `base_url` is vLLM's own server; `max_rank` the `--max-lora-rank` it was started with.
    Operations are serialised (one lock), so two `lora load` calls cannot interleave.
    """

    def __init__(self, base_version: str, base_name: str, *, max_rank: int = 16,
                 timeout: float = 120.0) -> None:
        self.base_name = base_name
        self.max_rank = max_rank
        self.timeout = timeout
        self.table = LoraTable(base_version)
        self.base_url: str | None = None
        self._lock = asyncio.Lock()

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        if self.base_url is None:
            raise LoraError(503, "vLLM is not running yet; retry when the server is ready")
        url = self.base_url + path
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as session, \
                    session.post(url, json=body) as resp:
                text = (await resp.text(errors="replace"))[:2000]
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LoraError(502, f"vLLM at {url} did not answer: {exc!r}") from None
        if status != 200:
            message = text
            try:
                err = json.loads(text)
                message = str(err.get("error", err).get("message", text)) \
                    if isinstance(err, dict) else text
            except (ValueError, AttributeError):
                pass
            raise LoraError(400 if status < 500 else 502,
                            f"vLLM refused {path} ({status}): {message.strip()}")

    async def load(self, version: str, path: str, name: str | None = None) -> Adapter:
        """Load the adapter in `path` as `version` (a new served name unless given)."""
        if not _VERSION.match(version):
            raise LoraError(400, f"{version!r} is not a version label", "version")
        if version == self.table.base_version:
            raise LoraError(400, f"{version} is this server's base version", "version")
        try:
            folder, rank = read_adapter(path)
            served = name or default_name(self.base_name, version, folder)
        except UserError as exc:
            raise LoraError(400, exc.message, "path") from None
        if rank > self.max_rank:
            raise LoraError(400, f"adapter rank {rank} exceeds this server's --max-lora-rank "
                            f"{self.max_rank}; restart it with a larger one", "path")
        async with self._lock:
            current = self.table.adapters.get(version)
            if current is not None:
                raise LoraError(409, f"{version} is already loaded (as {current.name}); "
                                "unload it first", "version")
            if served == self.base_name or any(a.name == served
                                               for a in self.table.adapters.values()):
                raise LoraError(409, f"served name {served!r} is taken; give another", "name")
            await self._post("/v1/load_lora_adapter",
                             {"lora_name": served, "lora_path": str(folder)})
            adapter = Adapter(version, served, str(folder), rank)
            self.table = self.table.with_(adapter)
            return adapter

    async def unload(self, version: str) -> Adapter:
        """Take `version` off the front (requests naming it then get a 404), then out of vLLM."""
        async with self._lock:
            adapter = self.table.adapters.get(version)
            if adapter is None:
                raise LoraError(404, f"no adapter version {version!r} is loaded here", "version")
            self.table = self.table.without(version)
            try:
                await self._post("/v1/unload_lora_adapter", {"lora_name": adapter.name})
            except LoraError:
                self.table = self.table.with_(adapter)
                raise
            return adapter
