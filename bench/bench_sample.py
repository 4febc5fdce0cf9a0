"""`vllm-canary sample` over a 1,000,000-line day of request logs (wall time and peak RSS,
goal ≤ 20 s and ≤ 150 MB), and answer throughput against concurrency on sim servers.
Writes bench/results/sample.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from vllm_canary import procs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = str(Path(sys.executable).with_name("vllm-canary"))
DAY = date(2026, 11, 24)
LINES = 1_000_000

# Runs `sample` in a fresh interpreter and reports its own peak RSS (VmHWM of this process;
# a parent's memory is not counted, unlike ru_maxrss after fork+exec).
WRAPPER = """
import json, sys, time
from vllm_canary.cli import main
started = time.monotonic()
code = main(sys.argv[1:])
wall = time.monotonic() - started
hwm = next(int(r.split()[1]) for r in open("/proc/self/status") if r.startswith("VmHWM:"))
print(json.dumps({"code": code, "wall_s": wall, "peak_rss_mb": hwm / 1024}), file=sys.stderr)
"""


BASELINE = """
from vllm_canary.cli import build_parser
build_parser()
print(next(int(r.split()[1]) for r in open("/proc/self/status") if r.startswith("VmHWM:")) / 1024)
"""


def write_log(folder: Path, lines: int, distinct: int) -> Path:
    """A realistic day: completions and chats, repeats, 1% opted out, 1% failed, a torn tail."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"requests-{DAY:%Y%m%d}-v1-bench.jsonl"
    filler = "The answer explains the idea in a few clear sentences for the user. " * 3
    with open(path, "w") as fh:
        for i in range(lines):
            base = {"ts": f"2026-11-24T{(i // 41667) % 24:02d}:00:00.000000+00:00",
                    "request_id": f"cmpl-{i:08d}", "version": "v1", "model": "sim-llm",
                    "host": "bench", "status": 200, "error": None, "opt_out": False,
                    "redacted": False, "prompt_tokens": 12, "completion_tokens": 40,
                    "latency_s": 0.4, "ttft_s": 0.05, "finish_reason": "length",
                    "params": {"max_tokens": 16, "temperature": 0.7, "top_p": 1.0, "n": 1,
                               "stop": None, "seed": None, "stream": False}}
            k = (i * 7919) % distinct
            if i % 100 == 0:
                rec = {**base, "opt_out": True, "endpoint": "/v1/completions"}
            elif i % 100 == 1:
                rec = {**base, "status": 500, "error": "engine failure",
                       "endpoint": "/v1/completions", "prompt": f"failing {k}"}
            elif i % 4 == 0:
                rec = {**base, "endpoint": "/v1/chat/completions", "completion": filler,
                       "messages": [{"role": "user", "content": f"Tell me about topic {k}"}]}
            else:
                rec = {**base, "endpoint": "/v1/completions", "completion": filler,
                       "prompt": f"Question {k}: how does the system handle case {k % 97}?"}
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        fh.write('{"ts": "2026-11-24T23:59:59')  # torn last line
    return path


def start_sim(
    tmp: Path, version: str, latency_factor: float,
) -> tuple[subprocess.Popen[bytes], str]:
    port, mport = procs.free_port(), procs.free_port()
    proc = procs.start([CLI, "serve", "--version", version, "--engine", "sim", "--host",
                        "127.0.0.1", "--port", str(port), "--metrics-port", str(mport),
                        "--latency-factor", str(latency_factor)],
                       log=tmp / f"serve-{version}.log")
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{url}/health", 60, proc)
    return proc, url


def run_sample(logs: Path, out: Path, v1: str, v2: str, n: int, concurrency: int) -> dict:
    argv = [sys.executable, "-c", WRAPPER, "sample", "--logs", str(logs), "--date", str(DAY),
            "--n", str(n), "--v1", v1, "--v2", v2, "--out", str(out),
            "--concurrency", str(concurrency)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmpdir:
        tmp = Path(tmpdir)
        load_before = os.getloadavg()[0]
        cli_mb = float(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True,
                                      text=True, check=True).stdout)
        started = time.monotonic()
        log = write_log(tmp / "logs", LINES, distinct=300_000)
        gen_s = time.monotonic() - started
        size_mb = log.stat().st_size / 2**20
        servers = [start_sim(tmp, v, 0.05) for v in ("v1", "v2")]
        try:
            big = run_sample(tmp / "logs", tmp / "out-big", servers[0][1], servers[1][1], 100, 8)
        finally:
            for proc, _ in servers:
                procs.stop(proc)
        small = tmp / "logs-small"
        write_log(small, 2_000, distinct=120)
        servers = [start_sim(tmp, v, 0.5) for v in ("v1", "v2")]
        rows = []
        try:
            for conc in (1, 2, 4, 8, 16, 32):
                t0 = time.monotonic()
                res = run_sample(small, tmp / f"out-c{conc}", servers[0][1], servers[1][1], 60,
                                 conc)
                # wall_s includes reading the small log (negligible here)
                rows.append((conc, 120 / res["wall_s"], res["wall_s"], time.monotonic() - t0))
        finally:
            for proc, _ in servers:
                procs.stop(proc)
    ok = lambda good: "yes" if good else "NO"  # noqa: E731
    lines = [
        "# `vllm-canary sample` benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
        "(other work shares the machine: numbers are upper bounds).",
        "",
        f"## 1,000,000 log lines ({size_mb:.0f} MB, 300,000 distinct prompts, 1% opted out, "
        f"1% failed, torn tail; generated in {gen_s:.0f} s)",
        "",
        "`sample --n 100 --concurrency 8` against two sim servers (latency factor 0.05):",
        "",
        "| measure | value | goal | met |",
        "|---|---|---|---|",
        f"| wall time (read + select + 200 answers + write) | {big['wall_s']:.1f} s | ≤ 20 s "
        f"| {ok(big['wall_s'] <= 20)} |",
        f"| peak RSS (VmHWM of the process) | {big['peak_rss_mb']:.0f} MB | ≤ 150 MB "
        f"| {ok(big['peak_rss_mb'] <= 150)} |",
        f"| of which the CLI itself (every area's commands imported) | {cli_mb:.0f} MB | | |",
        "",
        "## Answer throughput against concurrency",
        "",
        "60 prompts x 2 versions = 120 answers, sim servers with latency factor 0.5, "
        "`max_tokens` 16:",
        "",
        "| concurrency | answers/s | wall s |",
        "|---|---|---|",
        *[f"| {c} | {rate:.1f} | {wall:.1f} |" for c, rate, wall, _ in rows],
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sample.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
