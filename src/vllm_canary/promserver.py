"""A real Prometheus server on loopback: write its config, start the binary, query it.

`vllm-canary up` starts one when the `prometheus` binary is installed (Debian package
`prometheus`), and the tests use the same class to prove our PromQL against real data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_canary import procs

INSTALL_HINT = "install it with `apt-get install prometheus` (Debian) or put it on PATH"


def find_binary(name: str = "prometheus") -> str | None:
    return shutil.which(name)


@dataclass
class ScrapeJob:
    name: str
    targets: list[str]  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"
    honor_labels: bool = False  # keep labels the series bring (e.g. `version`) over ours
    target_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # per host:port

    def static_configs(self) -> list[dict[str, Any]]:
        """One group per target that has labels of its own, one group for the rest."""
        rest = [t for t in self.targets if t not in self.target_labels]
        groups = [{"targets": [t], "labels": {**self.labels, **self.target_labels[t]}}
                  for t in self.targets if t in self.target_labels]
        if rest:
            groups.append({"targets": rest, "labels": dict(self.labels)})
        return groups


@dataclass
class PrometheusServer:
    """One Prometheus process. Use as a context manager or call start()/stop()."""

    workdir: Path
    jobs: list[ScrapeJob]
    port: int = 0
    host: str = "127.0.0.1"
    scrape_interval: str = "1s"
    rule_files: list[Path] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job.name,
                    "metrics_path": job.metrics_path,
                    "honor_labels": job.honor_labels,
                    "static_configs": job.static_configs(),
                }
                for job in self.jobs
            ],
        }

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        binary = find_binary()
        if binary is None:
            raise FileNotFoundError(f"prometheus binary not found: {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = procs.free_port(self.host)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.proc = procs.start(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle",
            ],
            log=self.workdir / "prometheus.log",
        )
        procs.wait_http(f"{self.url}/-/ready", timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def query(self, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query; returns the `result` list (raises on a PromQL error)."""
        return query(self.url, promql, timeout)


def query(base_url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    url = f"{base_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
        raise ValueError(f"PromQL error for {promql!r}: {body.get('error')}") from None
    if body.get("status") != "success":
        raise ValueError(f"PromQL error for {promql!r}: {body.get('error')}")
    return list(body["data"]["result"])
