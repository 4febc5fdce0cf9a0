"""Settings of `vllm-canary gateway` (flags, VLLM_CANARY_* environment, or a YAML file)."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vllm_canary import atomic
from vllm_canary.errors import UserError
from vllm_canary.stackstate import state_home

DEFAULT_PORT = 8080
DEFAULT_METRICS_PORT = 15090  # Envoy's Prometheus port
DEFAULT_ADMIN_PORT = 15000  # Envoy's admin port


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: Path | None = None  # None: the packaged routes (the chart's default routing)
    upstream: list[str] = Field(default_factory=list)  # SUBSET=URL, e.g. v1=http://...:8101
    endpoints: Path | None = None  # YAML list of {url, labels, workload?}
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=DEFAULT_ADMIN_PORT, ge=0, le=65535)
    # The admin token: $VLLM_CANARY_ADMIN_TOKEN, the settings file, or --admin-token-file
    # (never a flag: argv is visible to every user in `ps`). None of them: a random token,
    # written to a 0600 file whose path is logged (the token itself is never printed).
    admin_token: str | None = None
    admin_token_file: Path | None = None
    admin_allow_remote: bool = False  # needed for an admin_host that is not loopback
    watch_interval: float = Field(default=1.0, gt=0.0)
    health_path: str = "/health"  # empty: no active health checks
    health_interval: float = Field(default=1.0, gt=0.0)
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    connect_timeout: float = Field(default=10.0, gt=0.0)  # Envoy's default
    stream_idle_timeout: float = Field(default=300.0, gt=0.0)  # Envoy's, seconds
    seed: int | None = None  # fixes weighted choices (tests, drills)
    # Mirror copies in flight per version before more are dropped (gateway/mirror.py).
    max_mirrors_in_flight: int = Field(default=64, ge=0)
    access_log: bool = False

    @model_validator(mode="after")
    def _needs_upstreams(self) -> GatewaySettings:
        if not self.upstream and self.endpoints is None:
            raise ValueError("give at least one --upstream SUBSET=URL (or --endpoints FILE)")
        if not self.admin_allow_remote and not is_loopback(self.admin_host):
            raise ValueError(f"--admin-host {self.admin_host} would expose the admin API (it "
                             "changes routing) beyond this machine; add --admin-allow-remote "
                             "if that is meant, or keep the default 127.0.0.1")
        return self


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or `localhost` (names are not resolved: any other
    name may reach other machines)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: Path) -> str:
    """The one token on the first line of `path` (the admin API's bearer token). Raises
    UserError, naming --admin-token-file, for a file it cannot read or that holds no token."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8"
        raise UserError(f"--admin-token-file {path}: cannot read it: {why}") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise UserError(f"--admin-token-file {path}: expected one token on one line")
    return token


def admin_token(settings: GatewaySettings) -> tuple[str, Path | None]:
    """The admin token and, when none was configured, the 0600 file a random one was written
    to. Raises UserError for an unreadable or empty --admin-token-file."""
    if settings.admin_token:
        return settings.admin_token, None
    if settings.admin_token_file is not None:
        return read_token_file(settings.admin_token_file), None
    token = secrets.token_urlsafe(24)
    path = state_home() / f"gateway-admin-{settings.admin_port}.token"
    atomic.write_text(path, token + "\n", mode=0o600)
    return token, path
