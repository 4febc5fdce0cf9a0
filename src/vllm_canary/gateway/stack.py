"""`vllm-canary up`: the local stack. v1 and v2 model servers, the gateway executing the
chart's routing, and a Prometheus server scraping all of them when one is installed.

Children run in their own process groups with output in `<log-dir>/stack/`; Ctrl-C or SIGTERM
stops them all, and a child that dies is reported and takes the stack down with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from vllm_canary import procs, promserver, stackstate
from vllm_canary.errors import UserError
from vllm_canary.gateway.store import default_routes_path, load_routes

VERSIONS = ("v1", "v2")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="start the local stack: v1 + v2 servers behind the canary gateway on :8080",
        description="Start v1 and v2 model servers, the gateway executing the chart's "
        "VirtualService (90/10, x-ab-test: v2 -> v2) and Prometheus if installed. Ctrl-C stops.",
    )
    p.add_argument("--engine", choices=["sim", "vllm", "upstream"], default="sim")
    for v in VERSIONS:
        p.add_argument(f"--model-{v}", help=f"vllm engine: model directory or name for {v}")
        p.add_argument(f"--upstream-{v}", help=f"upstream engine: OpenAI base URL for {v}")
    p.add_argument("--vllm-args", default="", metavar="ARGS",
                   help="vllm engine: extra arguments for vLLM's own server, one string split "
                   "as a shell would, e.g. '--max-model-len 256 --enforce-eager'")
    p.add_argument("--lora-v2", metavar="DIR",
                   help="vllm engine: v2 is this LoRA adapter, served by v1's vLLM (one vLLM, "
                   "two versions; docs/lora.md)")
    p.add_argument("--v2-error-rate", type=float, help="sim: fraction of v2 requests that fail")
    p.add_argument("--v2-latency-factor", type=float, help="sim: make v2 this much slower")
    p.add_argument("--host", default="127.0.0.1", help="listen address of everything")
    p.add_argument("--v1-port", type=int, default=8101)
    p.add_argument("--v1-metrics-port", type=int, default=8001)
    p.add_argument("--v2-port", type=int, default=8102)
    p.add_argument("--v2-metrics-port", type=int, default=8002)
    p.add_argument("--port", type=int, default=8080, help="gateway port")
    p.add_argument("--metrics-port", type=int, default=15090, help="gateway Istio metrics port")
    p.add_argument("--admin-port", type=int, default=15000, help="gateway admin API port")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--console-port", type=int, default=3000,
                   help="web console port (dashboard, topology, rollout, quality, routes)")
    p.add_argument("--no-console", action="store_true", help="do not start the web console")
    p.add_argument("--routes", type=Path, help="routes YAML (default: the chart's routing)")
    p.add_argument("--log-dir", type=Path, default=Path("logs"),
                   help="request logs, and process output under stack/ (default ./logs)")
    p.add_argument("--seed", type=int, help="gateway: fix the weighted choices")
    p.add_argument("--mirror-v2", type=float, metavar="PCT", nargs="?", const=100.0,
                   help="dark launch: also send PCT%% (default 100) of the split traffic to "
                        "v2, answers discarded (logged as shadow; see docs/darklaunch.md)")
    p.add_argument("--startup-timeout", type=float,
                   help="seconds to wait for each server (default 60; 900 with --engine vllm)")
    p.set_defaults(handler=run)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_url: str


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vllm_canary.cli", *args]


def _server_argv(args: argparse.Namespace, v: str, port: int, metrics: int,
                 engine_port: int | None = None) -> list[str]:
    argv = _cli("serve", "--version", v, "--engine", args.engine, "--host", args.host,
                "--port", str(port), "--metrics-port", str(metrics),
                "--log-dir", str(args.log_dir))
    if args.engine == "vllm":
        model = getattr(args, f"model_{v}")
        if not model:
            raise UserError(f"--engine vllm needs --model-{v} (a model directory or name)")
        argv += ["--model", model]
    if args.engine == "upstream":
        url = getattr(args, f"upstream_{v}")
        if not url:
            raise UserError(f"--engine upstream needs --upstream-{v} URL")
        argv += ["--upstream", url]
    lora = getattr(args, "lora_v2", None)
    if lora and v == "v1":  # v2 is an adapter on this server (server/lorafront.py)
        argv += ["--lora", f"v2={lora}"]
        if args.v2_error_rate is not None:
            argv += ["--lora-error-rate", f"v2={args.v2_error_rate}"]
    elif v == "v2" and args.v2_error_rate is not None:
        argv += ["--error-rate", str(args.v2_error_rate)]
    if v == "v2" and args.v2_latency_factor is not None:
        argv += ["--latency-factor", str(args.v2_latency_factor)]
    if engine_port is not None:  # vLLM's own server on a port we know, for Prometheus
        try:
            extra = shlex.split(args.vllm_args or "")
        except ValueError as exc:
            raise UserError(f"--vllm-args: {exc}") from None
        argv += ["--", *extra, "--port", str(engine_port)]
    return argv


def _check_ports(args: argparse.Namespace) -> None:
    wanted = {"--v1-port": args.v1_port, "--v1-metrics-port": args.v1_metrics_port,
              "--v2-port": args.v2_port, "--v2-metrics-port": args.v2_metrics_port,
              "--port": args.port, "--metrics-port": args.metrics_port,
              "--admin-port": args.admin_port}
    if not args.no_prometheus and promserver.find_binary():
        wanted["--prometheus-port"] = args.prometheus_port
    if not args.no_console:
        wanted["--console-port"] = args.console_port
    bad = [f"{flag} {port}" for flag, port in wanted.items() if not 0 < port < 65536]
    if bad:
        raise UserError(f"not a TCP port: {', '.join(bad)}; give a number from 1 to 65535")
    if len(set(wanted.values())) != len(wanted):
        raise UserError("two components were given the same port; give each its own")
    if not procs.port_is_free(0, args.host):  # any port: fails only for the address itself
        raise UserError(f"--host {args.host}: cannot listen on this address (not one of this "
                        "machine's?); the default is 127.0.0.1")
    busy = [f"{flag} {port}" for flag, port in wanted.items()
            if not procs.port_is_free(port, args.host)]
    if busy:
        raise UserError(f"port in use: {', '.join(busy)}; stop what holds it (another "
                        "`vllm-canary up`?) or pass a different port")


def _own_servers(args: argparse.Namespace) -> tuple[str, ...]:
    """The versions that run a server of their own (with --lora-v2, v2 runs on v1's)."""
    return ("v1",) if getattr(args, "lora_v2", None) else VERSIONS


def _check_lora(args: argparse.Namespace) -> str | None:
    """--lora-v2 DIR, checked: the absolute adapter folder, or None without the flag."""
    if not getattr(args, "lora_v2", None):
        return None
    if args.engine != "vllm":
        raise UserError("--lora-v2 needs --engine vllm (the adapter is loaded into v1's vLLM)")
    if args.model_v2:
        raise UserError("--lora-v2 and --model-v2 both name v2; give one")
    if getattr(args, "mirror_v2", None) is not None:
        raise UserError("--mirror-v2 with --lora-v2: a mirror cannot set the version header")
    from vllm_canary.server.lora import read_adapter

    folder, _ = read_adapter(args.lora_v2)
    args.lora_v2 = str(folder)
    return args.lora_v2


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _check_drill_flags(args: argparse.Namespace) -> None:
    """The bad-canary knobs, checked before anything starts and named as the user wrote them
    (the same bounds as `serve --error-rate/--latency-factor`)."""
    rate, factor = args.v2_error_rate, args.v2_latency_factor
    if rate is not None and not 0.0 <= rate <= 1.0:
        raise UserError(f"--v2-error-rate {rate:g}: give a fraction between 0 and 1 "
                        "(0.05 = 5% of v2's requests fail)")
    if factor is not None and not factor > 0.0:
        raise UserError(f"--v2-latency-factor {factor:g}: give a factor above 0 "
                        "(1.5 = 50% slower)")


def run(args: argparse.Namespace) -> int:
    _check_drill_flags(args)
    if args.routes is not None:
        load_routes(args.routes)  # a bad routes file is a one-line error before anything starts
    running = stackstate.load()
    if running is not None and running.pid != os.getpid():
        raise UserError(f"a local stack is already running (pid {running.pid}, gateway "
                        f"{running.gateway_url}); stop it first")
    _check_ports(args)
    timeout = args.startup_timeout or (900.0 if args.engine == "vllm" else 60.0)
    workdir = args.log_dir / "stack"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--log-dir {args.log_dir}: cannot create {workdir}: "
                        f"{exc.strerror}") from None
    token = secrets.token_urlsafe(24)
    routes = args.routes or default_routes_path()
    lora = _check_lora(args)
    if lora:  # the chart's routing with v2 on v1's pods (gateway/loraroutes.py)
        from vllm_canary.gateway import loraroutes

        routes = loraroutes.write(workdir / "routes-lora.yaml", loraroutes.share_pods(
            loraroutes.read(routes), {"v2": "v1"}), f"# {routes}, v2 = LoRA {lora}\n")
    if getattr(args, "mirror_v2", None) is not None:
        from vllm_canary.gateway.mirror import mirrored_routes_file

        routes = mirrored_routes_file(routes, workdir / "routes-mirrored.yaml", "v2",
                                      args.mirror_v2)
    base = f"http://{args.host}"
    children: list[Child] = []
    prometheus: promserver.PrometheusServer | None = None
    console: Child | None = None
    # --engine vllm: each vLLM child's own port, so Prometheus scrapes its `vllm:` series.
    engine_ports = ({v: procs.free_port(args.host) for v in _own_servers(args)}
                    if args.engine == "vllm" else {})
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell starts a background job (`make up &`) with SIGINT ignored, and Python then keeps
    # it ignored: `kill -INT` must still stop the stack, as Ctrl-C does in a terminal.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for v, port, metrics in (("v1", args.v1_port, args.v1_metrics_port),
                                 ("v2", args.v2_port, args.v2_metrics_port)):
            if v not in _own_servers(args):
                continue
            log = workdir / f"{v}.log"
            argv = _server_argv(args, v, port, metrics, engine_ports.get(v))
            env = {"VLLM_CANARY_ADMIN_TOKEN": token} if lora else None  # `lora load`
            children.append(Child(f"{v} server", procs.start(argv, env=env, log=log), log,
                                  f"{base}:{port}/health"))
        gw_argv = [sys.executable, "-m", "vllm_canary.gateway", "gateway",
                   "--routes", str(routes), "--host", args.host, "--port", str(args.port),
                   "--metrics-port", str(args.metrics_port), "--admin-port", str(args.admin_port),
                   "--upstream", f"v1={base}:{args.v1_port}"]
        if not lora:
            gw_argv += ["--upstream", f"v2={base}:{args.v2_port}"]
        if args.seed is not None:
            gw_argv += ["--seed", str(args.seed)]
        log = workdir / "gateway.log"
        children.append(Child("gateway", procs.start(
            gw_argv, env={"VLLM_CANARY_ADMIN_TOKEN": token}, log=log), log,
            f"{base}:{args.metrics_port}/metrics"))
        for child in children:
            try:
                procs.wait_http(child.ready_url, timeout, child.proc)
            except (RuntimeError, TimeoutError) as exc:
                said = f": {_tail(child.log, 1)}" if child.proc.poll() is not None else ""
                raise UserError(f"{child.name} did not start ({exc}){said}; see "
                                f"{child.log}") from None
        if not args.no_prometheus and promserver.find_binary():
            prometheus = _start_prometheus(args, workdir, engine_ports)
        if not args.no_console:
            console = _start_console(args, workdir, base, token,
                                     prometheus.url if prometheus else None)
        state = stackstate.StackState(
            pid=os.getpid(), gateway_url=f"{base}:{args.port}",
            gateway_metrics_url=f"{base}:{args.metrics_port}/metrics",
            admin_url=f"{base}:{args.admin_port}", admin_token=token, routes_file=str(routes),
            servers={v: stackstate.ServerInfo(url=f"{base}:{p}", metrics_url=f"{base}:{m}/metrics")
                     for v, p, m in (("v1", args.v1_port, args.v1_metrics_port),
                                     ("v2", args.v2_port, args.v2_metrics_port))
                     if v in _own_servers(args)},
            lora={"v2": "v1"} if lora else {},
            prometheus_url=prometheus.url if prometheus else None,
            log_dir=str(args.log_dir.resolve()),
            console_url=f"{base}:{args.console_port}" if console else None,
        )
        state_file = stackstate.save(state)
        _print_table(args, state, routes, workdir, state_file)
        return _supervise(children, prometheus, console)
    except KeyboardInterrupt:
        print("\nstopping the local stack ...", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        mine = stackstate.load()
        if mine is not None and mine.pid == os.getpid():
            stackstate.clear()
        if console is not None:
            procs.stop(console.proc)
        if prometheus is not None:
            prometheus.stop()
        for child in reversed(children):
            procs.stop(child.proc)


def scrape_jobs(args: argparse.Namespace,
                engine_ports: dict[str, int]) -> list[promserver.ScrapeJob]:
    """The stack's scrape targets, each model-server target labelled with its `version` as
    the chart's ServiceMonitor does (`podTargetLabels: [version]`): the gateway's Istio
    metrics, both fronts (`vllm_*`, honor_labels: their series carry `version` already), and
    with --engine vllm each vLLM child's own /metrics (`vllm:*`, labelled by target)."""
    fronts = {"v1": args.v1_metrics_port, "v2": args.v2_metrics_port}
    fronts = {v: p for v, p in fronts.items() if v in _own_servers(args)}
    jobs = [
        promserver.ScrapeJob("istio-gateway", [f"{args.host}:{args.metrics_port}"]),
        promserver.ScrapeJob("vllm-service", [f"{args.host}:{p}" for p in fronts.values()],
                             honor_labels=True,
                             target_labels={f"{args.host}:{p}": {"version": v}
                                            for v, p in fronts.items()}),
    ]
    if engine_ports:
        jobs.append(promserver.ScrapeJob(
            "vllm-engine", [f"{args.host}:{p}" for p in engine_ports.values()],
            target_labels={f"{args.host}:{p}": {"version": v} for v, p in engine_ports.items()}))
    return jobs


def _start_prometheus(args: argparse.Namespace, workdir: Path,
                      engine_ports: dict[str, int]) -> promserver.PrometheusServer | None:
    jobs = scrape_jobs(args, engine_ports)
    server = promserver.PrometheusServer(workdir / "prometheus", jobs, port=args.prometheus_port,
                                         host=args.host)
    try:
        return server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        server.stop()
        print(f"warning: Prometheus did not start ({exc}); see "
              f"{workdir / 'prometheus' / 'prometheus.log'}", file=sys.stderr)
        return None


def _start_console(args: argparse.Namespace, workdir: Path, base: str, token: str,
                   prometheus_url: str | None) -> Child | None:
    """`vllm-canary console` as a child (the admin token in its environment, never argv);
    one that does not start is a warning, as for Prometheus: the stack still serves."""
    argv = _cli("console", "--host", args.host, "--port", str(args.console_port),
                "--admin-url", f"{base}:{args.admin_port}", "--scrape-interval", "1s",
                "--refresh", "2")
    if prometheus_url:
        argv += ["--prometheus", prometheus_url]
    log = workdir / "console.log"
    child = Child("console", procs.start(argv, env={"VLLM_CANARY_ADMIN_TOKEN": token},
                                         log=log), log, f"{base}:{args.console_port}/healthz")
    try:
        procs.wait_http(child.ready_url, 30.0, child.proc)
    except (RuntimeError, TimeoutError) as exc:
        procs.stop(child.proc)
        print(f"warning: the console did not start ({exc}); see {log}", file=sys.stderr)
        return None
    return child


def _print_table(args: argparse.Namespace, state: stackstate.StackState, routes: Path,
                 workdir: Path, state_file: Path) -> None:
    rows = [
        (f"{v} server", f"{state.servers[v].url}  (metrics {state.servers[v].metrics_url})",
         f"{workdir}/{v}.log") for v in state.servers
    ] + [(f"{v} (LoRA)", f"adapter {args.lora_v2} on the {base} server", "")
         for v, base in state.lora.items()] + [
        ("gateway", f"{state.gateway_url}  (routes {routes})", f"{workdir}/gateway.log"),
        ("istio metrics", state.gateway_metrics_url, ""),
        ("admin API", f"{state.admin_url}  (token in {state_file})", ""),
        ("prometheus", state.prometheus_url or "not running (" + (
            "--no-prometheus" if args.no_prometheus else
            "install it: `sudo apt-get install prometheus`, or `make up` as root") + ")",
         f"{workdir}/prometheus/prometheus.log" if state.prometheus_url else ""),
        ("console", state.console_url or "not running" + (
            " (--no-console)" if args.no_console else f" (see {workdir}/console.log)"),
         f"{workdir}/console.log" if state.console_url else ""),
        ("request logs", str(args.log_dir), ""),
    ]
    print(f"vllm-canary local stack (engine {args.engine}, pid {state.pid})")
    for name, where, log in rows:
        print(f"  {name:<14} {where}" + (f"\n  {'':<14} log: {log}" if log else ""))
    print(f"\ntry:  curl -s {state.gateway_url}/v1/completions "
          "-d '{\"prompt\":\"hello\",\"max_tokens\":5}'")
    print("      vllm-canary routes get   |   vllm-canary status   |   Ctrl-C stops everything",
          flush=True)


def _supervise(children: list[Child], prometheus: promserver.PrometheusServer | None,
               console: Child | None = None) -> int:
    """Wait until a child dies (reported, exit 1) or Ctrl-C/SIGTERM (KeyboardInterrupt)."""
    while True:
        for child in children:
            code = child.proc.poll()
            if code is not None:
                tail = _tail(child.log)
                print(f"error: {child.name} (pid {child.proc.pid}) exited with code {code}; "
                      f"stopping the stack. Last lines of {child.log}:\n{tail}",
                      file=sys.stderr, flush=True)
                return 1
        if prometheus is not None and prometheus.proc is not None and \
                prometheus.proc.poll() is not None:
            print(f"warning: Prometheus exited with code {prometheus.proc.returncode}; the "
                  "rest keeps running", file=sys.stderr, flush=True)
            prometheus.proc = None
        if console is not None and console.proc.poll() is not None:
            print(f"warning: the console exited with code {console.proc.returncode} (see "
                  f"{console.log}); the rest keeps running", file=sys.stderr, flush=True)
            console = None
        time.sleep(0.5)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
