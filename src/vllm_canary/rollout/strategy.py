"""The rollout strategy file: Argo-like steps (`setWeight`, `setMirror`, `pause`, `analysis`)
and which metrics the analysis compares between the canary (v2) and the baseline (v1).

`setMirror: P` dark-launches: P% of the weighted route's traffic is also sent to the canary,
its answers discarded (Istio `mirror` + `mirrorPercentage`). While the canary's weight is 0
the analysis compares its shadow answers with the baseline's served ones (docs/darklaunch.md);
`agreement` is the mean text similarity of those pairs, passing at `minAgreement`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vllm_canary.config import read_yaml_mapping
from vllm_canary.errors import UserError

BUILTIN_METRICS = ("error-rate", "latency-p95", "ttft-p95", "itl-p95", "quality", "agreement")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """'2m', '30s', '500ms', '1h' or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(value))
        if not m:
            raise ValueError(f"bad duration {value!r}: write e.g. 30s, 2m, 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TimedSpec(_Model):
    duration: float | None = None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


class Step(_Model):
    """Exactly one of setWeight, setMirror, pause, analysis."""

    set_weight: int | None = Field(default=None, alias="setWeight", ge=0, le=100)
    set_mirror: float | None = Field(default=None, alias="setMirror", ge=0, le=100)
    pause: TimedSpec | None = None
    analysis: TimedSpec | None = None

    @property
    def kind(self) -> Literal["setWeight", "setMirror", "pause", "analysis"]:
        if self.set_weight is not None:
            return "setWeight"
        if self.set_mirror is not None:
            return "setMirror"
        return "pause" if self.pause is not None else "analysis"


class CustomMetric(_Model):
    """A PromQL query with `$version` in it, compared canary vs baseline at each gate."""

    name: str
    query: str
    max_increase: float = Field(default=0.1, alias="maxIncrease", ge=0)


class AnalysisSpec(_Model):
    metrics: list[str | CustomMetric] = Field(default_factory=lambda: ["error-rate", "latency-p95"])
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    margin: float = Field(default=0.0, ge=0)  # relative slack: canary may be this much worse
    # Promotion gate: the last analysis passes only once the canary's event rate is shown to
    # be below `tolerance` x the baseline's (None: no evidence of regression is enough).
    tolerance: float | None = Field(default=None, gt=1)
    quantile: float = Field(default=0.95, gt=0.5, lt=1)
    min_samples: int = Field(default=50, alias="minSamples", ge=1)
    interval: float = Field(default=5.0, gt=0)  # 0 would make the controller spin
    timeout_factor: float = Field(default=3.0, alias="timeoutFactor", ge=1)
    down_after: float = Field(default=15.0, alias="downAfter")  # canary down this long: abort
    reports: str = "reports"  # where the data loop writes <day>/decision.json (quality)
    # agreement: request-log folder(s) holding both versions' lines, and the pass mark of the
    # mean similarity of shadow pairs (0..1; dataloop/shadow.py's normalised similarity).
    logs: list[str] = Field(default_factory=lambda: ["logs"])
    min_agreement: float = Field(default=0.5, alias="minAgreement", ge=0, le=1)

    @field_validator("logs", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("interval", "down_after", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str | CustomMetric]) -> list[str | CustomMetric]:
        for m in v:
            if isinstance(m, str) and m not in BUILTIN_METRICS:
                raise ValueError(f"unknown metric {m!r}: use one of {', '.join(BUILTIN_METRICS)} "
                                 "or {name, query} for PromQL")
        if not v:
            raise ValueError("list at least one metric")
        names = [m if isinstance(m, str) else m.name for m in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # verdicts, the live view and /analyze?metric= are keyed by name
            raise ValueError(f"metric {twice[0]!r} is listed twice: give each metric its own name")
        return v

    def metric_names(self) -> list[str]:
        return [m if isinstance(m, str) else m.name for m in self.metrics]


class Strategy(_Model):
    steps: list[Step]
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    stable: str = "v1"
    canary: str = "v2"

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[Step]) -> list[Step]:
        if not v:
            raise ValueError("list at least one step")
        for i, step in enumerate(v):
            given = [step.set_weight is not None, step.set_mirror is not None,
                     step.pause is not None, step.analysis is not None]
            if sum(given) != 1:
                raise ValueError(f"step {i + 1}: use exactly one of setWeight, setMirror, "
                                 "pause, analysis")
        return v

    @model_validator(mode="after")
    def _two_versions(self) -> Strategy:
        if self.stable == self.canary:
            raise ValueError(f"stable and canary are both {self.stable!r}: name two versions")
        return self


def load_strategy(path: Path) -> Strategy:
    """Read and validate a strategy file; every mistake is a one-line UserError."""
    return parse_strategy(read_yaml_mapping(Path(path), "strategy"), str(path))


def parse_strategy(data: Any, where: str = "strategy") -> Strategy:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with `steps:` (and optionally `analysis:`)")
    try:
        return Strategy.model_validate(data)
    except ValidationError as exc:
        # A metric is a name or a {name, query} mapping: pydantic reports both branches of
        # that union; the deepest error is the one about what the user actually wrote.
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        loc = ".".join(str(p) for p in first["loc"] if p not in ("str", "CustomMetric"))
        message = first["msg"].removeprefix("Value error, ")
        if not loc:  # a rule across fields: its message says it all
            raise UserError(f"{where}: {message}") from None
        raise UserError(f"{where}: invalid {loc!r}: {message}") from None
