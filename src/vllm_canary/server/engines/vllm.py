"""The `vllm` engine: run vLLM's own OpenAI server as a supervised child; the relay front
(server/relay.py) forwards every request to it, bytes unchanged.

The child is `<python> -m vllm.entrypoints.openai.api_server` on a loopback port; we are ready
only once its /health answers 200, and if it dies we turn unhealthy and tell the front (the
`failed` event, `on_exit` or `wait_exit()`) so the server exits non-zero instead of serving
errors forever. An UpstreamEngine pointed at the child probes it for hangs once ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from ... import procs
from ...errors import UserError
from .base import EngineError
from .upstream import UpstreamEngine

log = logging.getLogger(__name__)

# Offline, quiet, and a KV cache that fits a laptop (GiB; vLLM's CPU backend reads this).
# Values already set in the environment win.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


def cache_dir() -> Path:
    """Where scripts/setup.d/20-vllm.sh keeps the vLLM venv and the tiny models."""
    env = os.environ.get("VLLM_CANARY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vllm-canary"


def default_python() -> str:
    """The cached vLLM venv's Python when the setup script made one, else our own interpreter
    (right on a GPU host or in the server image, where vLLM is installed alongside us)."""
    cached = cache_dir() / "venv-vllm" / "bin" / "python"
    return str(cached) if cached.exists() else sys.executable


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given for `flag` (`--flag V` or `--flag=V`), as argparse reads it."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _looks_local(model: str) -> bool:
    """A folder path rather than a model-hub name like `org/model` (which vLLM resolves itself,
    where a hub is reachable)."""
    return Path(model).exists() or model.startswith(("/", "./", "../", "~")) or model in (".", "..")


class VllmEngine:
    """Start, supervise and front one vLLM OpenAI server child process."""

    name = "vllm"
    gate = True  # requests before the child is ready are a 503 at the front, not relayed

    def __init__(
        self,
        *,
        model_dir: str | Path,
        model_name: str | None = None,
        python: str | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 600.0,
        log_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        # A local folder, or a hub name passed on to vLLM as it is.
        self.model_dir = Path(model_dir).expanduser()
        self.model_name = model_name or self.model_dir.name
        self.python = python or default_python()
        self.extra_args = list(extra_args)
        # `-- --port N` / `--host H` after the CLI's `--` choose the child's address too.
        self.host = flag_value(self.extra_args, "--host") or host
        explicit_port = flag_value(self.extra_args, "--port")
        self.port = int(explicit_port) if explicit_port else port
        self.startup_timeout = startup_timeout
        self.log_file = Path(log_file) if log_file else None
        self.env = dict(env or {})
        self.on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self._upstream: UpstreamEngine | None = None
        self._child_ready = False
        self._closing = False
        self._exited: asyncio.Future[int] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        # Set when the child died underneath us (the front then exits non-zero).
        self.failed = asyncio.Event()

    @property
    def base_url(self) -> str:
        """The child's own URL (its /metrics has vLLM's `vllm:` series)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def argv(self) -> list[str]:
        """The child's command line (without our-chosen flags the extra args already set)."""
        argv = [self.python, "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", str(self.model_dir), "--served-model-name", self.model_name]
        if flag_value(self.extra_args, "--host") is None:
            argv += ["--host", self.host]
        if flag_value(self.extra_args, "--port") is None:
            argv += ["--port", str(self.port)]
        return argv + self.extra_args

    def child_env(self) -> dict[str, str]:
        env = {k: os.environ.get(k, v) for k, v in CHILD_ENV.items()}
        env.update(self.env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and return; readiness and the child's exit are watched in the
        background (vLLM takes ~25 s or more to load)."""
        if self.proc is not None:
            return
        if _looks_local(str(self.model_dir)) and not (self.model_dir / "config.json").is_file():
            raise UserError(
                f"{self.model_dir} is not a model folder (no config.json): pass --model DIR; "
                "scripts/setup.d/20-vllm.sh builds tiny ones under ~/.cache/vllm-canary/models"
            )
        if shutil.which(self.python) is None:
            raise UserError(
                f"python {self.python} not found: install vLLM (scripts/setup.d/20-vllm.sh makes "
                "a CPU build venv) or name its interpreter"
            )
        if self.port is None:
            self.port = procs.free_port(self.host)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._exited = asyncio.get_running_loop().create_future()
        log.info("starting vLLM: %s", " ".join(self.argv()))
        self.proc = procs.start(self.argv(), env=self.child_env(), log=self.log_file)
        self._upstream = UpstreamEngine(
            self.base_url,
            model_name=self.model_name,
            # The supervisor already watches the process; probes only catch a hung server,
            # and each one is a line in vLLM's access log.
            health_interval=5.0,
        )
        self._supervisor = asyncio.create_task(self._supervise(), name="vllm-supervisor")

    async def _supervise(self) -> None:
        """Wait for the child's /health, then watch for its exit."""
        assert self.proc is not None and self._upstream is not None
        deadline = time.monotonic() + self.startup_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not self._child_ready and self.proc.poll() is None:
                if time.monotonic() > deadline:
                    log.error("vLLM not ready after %.0fs; stopping it", self.startup_timeout)
                    await asyncio.to_thread(procs.stop, self.proc)
                    break
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base_url}/health") as resp:
                        self._child_ready = resp.status == 200
                if not self._child_ready:
                    await asyncio.sleep(0.25)
        if self._child_ready:
            await self._upstream.start()
            log.info("vLLM ready at %s serving %s", self.base_url, self.model_name)
        while self.proc.poll() is None:
            await asyncio.sleep(0.25)
        self._child_ready = False
        code = self.proc.returncode
        if not self._closing:
            # vLLM's engine-core and worker processes outlive a killed API server: end them too.
            await asyncio.to_thread(_end_group, self.proc.pid, 0.0)
            log.error("vLLM child exited with code %s", code)
            code = code or 1  # an unexpected exit is a failure even when the child said 0
            self.failed.set()
            if self.on_exit is not None:
                self.on_exit(code)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)

    async def wait_exit(self) -> int:
        """Resolves with the child's exit code when it dies (non-zero unless we stopped it)."""
        if self._exited is None:
            raise RuntimeError("VllmEngine.start() was not called")
        return await asyncio.shield(self._exited)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ready; raise EngineError if the child exits or `timeout` passes first."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while not self.ready():
            if self._exited is not None and self._exited.done():
                raise EngineError(503, f"vLLM exited with code {self._exited.result()}")
            if time.monotonic() > deadline:
                raise EngineError(503, "vLLM is not ready yet")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop the child with SIGTERM (SIGKILL after 15 s) and release the connection pool."""
        self._closing = True
        self._child_ready = False
        if self._upstream is not None:
            await self._upstream.close()
        if self.proc is not None:
            await asyncio.to_thread(procs.stop, self.proc, 15.0)
            await asyncio.to_thread(_end_group, self.proc.pid, 5.0)
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._supervisor, 5)

    def ready(self) -> bool:
        return (
            self._child_ready
            and self.proc is not None
            and self.proc.poll() is None
            and self._upstream is not None
            and self._upstream.ready()
        )

    def model_names(self) -> list[str]:
        return [self.model_name]


def _end_group(pgid: int, grace: float) -> None:
    """Wait up to `grace` seconds for what is left of a process group to exit, then SIGKILL it."""
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)
