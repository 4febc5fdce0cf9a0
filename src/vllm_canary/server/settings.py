"""Settings of `vllm-canary serve` (flags, VLLM_CANARY_* environment, or a YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Kubernetes label values: the version is a DestinationRule subset label and a metric label.
VERSION_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(default="v1", pattern=VERSION_PATTERN)
    engine: Literal["sim", "vllm", "upstream"] = "sim"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int | None = Field(default=8001, ge=0, le=65535)  # 0 or None: main port only
    model_name: str | None = None  # served model name; default per engine
    model: str | None = None  # vllm: model directory or name
    upstream: str | None = None  # upstream: OpenAI-compatible base URL
    # vllm/upstream: seconds the upstream may stay silent (before its answer's head, or between
    # two body reads) before the front gives up with a 504
    upstream_timeout: float = Field(default=600.0, gt=0.0)
    log_dir: Path | None = None  # request log; None disables it
    log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    log_redact: bool = True
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_tokens_limit: int = Field(default=32768, ge=1)
    drain_timeout: float = Field(default=30.0, ge=0.0)
    # sim engine
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_factor: float = Field(default=1.0, gt=0.0)
    ttft_ms: float = Field(default=40.0, ge=0.0)
    tpot_ms: float = Field(default=15.0, ge=0.0)
    max_model_len: int = Field(default=4096, ge=16)
    seed: int | None = None
    # vllm engine
    vllm_python: str | None = None
    vllm_args: list[str] = Field(default_factory=list)
    startup_timeout: float = Field(default=900.0, gt=0.0)
    # vllm engine, LoRA versions (server/lora.py): `VERSION=DIR` or `VERSION:NAME=DIR` each,
    # loaded at start; enable_lora also allows `vllm-canary lora load` with none at start.
    lora: list[str] = Field(default_factory=list)
    enable_lora: bool = False
    max_lora_rank: int | None = Field(default=None, ge=1)
    max_loras: int = Field(default=4, ge=1)
    lora_error_rate: list[str] = Field(default_factory=list)  # VERSION=RATE: injected 500s

    @model_validator(mode="after")
    def _engine_needs(self) -> ServeSettings:
        if self.engine == "vllm" and not self.model:
            raise ValueError("--engine vllm needs --model (a model directory or name)")
        if self.engine == "upstream" and not self.upstream:
            raise ValueError("--engine upstream needs --upstream URL")
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"--upstream must be an http(s) URL, got {self.upstream!r}")
        if (self.lora or self.enable_lora) and self.engine != "vllm":
            raise ValueError("--lora and --enable-lora need --engine vllm (adapters are "
                             "loaded into the vLLM child)")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("--metrics-port must differ from --port (or be 0 to disable)")
        return self

    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.engine == "vllm" and self.model:
            return Path(self.model.rstrip("/")).name or self.model
        return "sim-llm" if self.engine == "sim" else ""
