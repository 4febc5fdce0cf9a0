"""`vllm-canary loop daily`: what the CronJob runs each night — sample yesterday's prompts and,
when a Label Studio URL is configured, push them for annotation. Settings come from flags,
`VLLM_CANARY_*` variables or a YAML file (see vllm_canary.config)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vllm_canary.config import load_settings
from vllm_canary.errors import ConfigError


class DailySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    logs: list[Path] = [Path("logs")]
    out: Path = Path("annotations")
    date: str | None = None
    n: int = Field(100, ge=1)
    v1: str | None = None
    v2: str | None = None
    seed: int = 0
    mode: Literal["rating", "pairwise"] = "pairwise"
    labelstudio_url: str | None = None
    labelstudio_token: str | None = None
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    from_shadow: bool = False  # pairs from a dark launch's logs (no v1/v2 URLs needed)

    @field_validator("logs", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value


def run(args: argparse.Namespace) -> int:
    """Sample the day, then push it when Label Studio is configured."""
    from vllm_canary.dataloop import collect, generate, labelstudio, lsclient, samplefile
    from vllm_canary.dataloop.commands import check_url, default_title, make_dir, parse_day

    s = load_settings(DailySettings, vars(args), file=args.config)
    if not s.from_shadow and (not s.v1 or not s.v2):
        raise ConfigError("loop daily needs the URLs of both versions: --v1/--v2, "
                          "VLLM_CANARY_V1/VLLM_CANARY_V2 or v1:/v2: in --config "
                          "(or --from-shadow during a dark launch)")
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    day = parse_day(s.date, yesterday)
    make_dir(s.out)
    if s.from_shadow:
        from vllm_canary.dataloop import shadow

        res = shadow.sample_pairs(s.logs, day, s.n, s.out, seed=s.seed)
    else:
        targets = [generate.Target("v1", check_url(str(s.v1), "--v1")),
                   generate.Target("v2", check_url(str(s.v2), "--v2"))]
        res = collect.run_sample(s.logs, day, s.n, targets, s.out, seed=s.seed,
                                 policy=generate.Policy(s.concurrency, s.timeout, s.retries))
    print(f"{res.path}: {res.items} items ({res.stats.lines} log lines, "
          f"{res.failed_answers} failed answers)")
    if s.labelstudio_url:
        tasks = labelstudio.tasks_for(samplefile.load_samples(res.path), s.mode, seed=s.seed)
        pushed = lsclient.push(s.labelstudio_url, s.labelstudio_token or "", tasks, s.mode,
                               default_title(res.path, s.mode))
        print(f"Label Studio project {pushed.project_id}: {pushed.imported} tasks imported, "
              f"{pushed.already_there} already there")
    else:
        print("Label Studio not configured (VLLM_CANARY_LABELSTUDIO_URL): push skipped")
    return 0
