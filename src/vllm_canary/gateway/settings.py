"""Settings of `vllm-canary gateway` (flags, VLLM_CANARY_* environment, or a YAML file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    admin_token: str | None = None  # None: a random one, printed once at start
    watch_interval: float = Field(default=1.0, gt=0.0)
    health_path: str = "/health"  # empty: no active health checks
    health_interval: float = Field(default=1.0, gt=0.0)
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    connect_timeout: float = Field(default=10.0, gt=0.0)  # Envoy's default
    idle_timeout: float = Field(default=300.0, gt=0.0)  # Envoy's stream idle timeout
    seed: int | None = None  # fixes weighted choices (tests, drills)
    # Mirror copies in flight per version before more are dropped (gateway/mirror.py).
    max_mirrors_in_flight: int = Field(default=64, ge=0)
    access_log: bool = False

    @model_validator(mode="after")
    def _needs_upstreams(self) -> GatewaySettings:
        if not self.upstream and self.endpoints is None:
            raise ValueError("give at least one --upstream SUBSET=URL (or --endpoints FILE)")
        return self
