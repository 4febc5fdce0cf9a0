"""Sub-commands of the rollout area: `rollout start|status|promote|abort|resume`,
`analyze [--serve]`, and `bench canary` (registered by vllm_canary.cli)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vllm_canary import procs
from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.rollout.state import Phase, RolloutState, StateStore, default_path
from vllm_canary.rollout.targets import (
    add_target_flags,
    build_actuator,
    build_source,
    target_from_args,
)

EXIT_PROMOTED, EXIT_ABORTED, EXIT_UNFINISHED = 0, 4, 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the top-level parser."""
    ro = sub.add_parser("rollout", help="progressive canary rollout with sequential analysis")
    ro_sub = ro.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    start = ro_sub.add_parser(
        "start", help="run a rollout in the foreground (exit 0 promoted, 4 aborted)")
    start.add_argument("--strategy", type=Path, required=True, help="strategy YAML")
    _common(start)
    add_target_flags(start)
    start.add_argument("--metrics-port", type=int, help="export phase and weight on this port")
    start.add_argument("--unload-on-abort", action="store_true",
                       help="LoRA canary: unload the adapter when the rollout aborts")
    start.set_defaults(handler=_start)
    for name, helptext in (("status", "show the rollout's phase, weights and verdicts"),
                           ("promote", "skip the remaining steps: all traffic to the canary"),
                           ("abort", "stop: all traffic back to the stable version"),
                           ("resume", "go on from a pause, or restart a stopped controller")):
        p = ro_sub.add_parser(name, help=helptext)
        _common(p)
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(handler={"status": _status, "promote": _request, "abort": _request,
                                "resume": _resume}[name])

    an = sub.add_parser("analyze", help="compare v2 with v1 now (or serve it to Argo: --serve)")
    an.add_argument("--strategy", type=Path, help="take `analysis:` from this strategy file")
    an.add_argument("--serve", action="store_true", help="answer GET /analyze?metric=NAME")
    an.add_argument("--host", default="127.0.0.1")
    an.add_argument("--port", type=int, default=8090)
    an.add_argument("--duration", type=float, default=60.0, help="seconds to watch (no --serve)")
    add_target_flags(an)
    an.set_defaults(handler=_analyze)

    bench = _bench_group(sub)
    bc = bench.add_parser("canary", help="sequential analysis vs Flagger's method, simulated")
    bc.add_argument("--runs", type=_positive_int, default=500)
    bc.add_argument("--minutes", type=_positive_int, default=20,
                    help="simulated horizon per run")
    bc.add_argument("--seed", type=int, default=7)
    bc.add_argument("--alpha", type=float, default=0.01)
    bc.add_argument("--out", type=Path, default=Path("bench/results"))
    bc.add_argument("--no-plot", action="store_true")
    bc.set_defaults(handler=_bench_canary)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bench_canary(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    from vllm_canary.analysis import benchmark  # numpy/scipy: only when benchmarking

    return benchmark.run(args)


def _bench_group(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The shared `bench` group (other areas may add their own benchmarks to it)."""
    parser = sub.choices.get("bench")
    if parser is None:
        parser = sub.add_parser("bench", help="benchmarks")
        parser.bench_subparsers = parser.add_subparsers(  # type: ignore[attr-defined]
            dest="bench", metavar="BENCH", required=True)
    return parser.bench_subparsers  # type: ignore[attr-defined,no-any-return]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, help="rollout state file (default: "
                   "$XDG_STATE_HOME/vllm-canary/rollout.json)")


def _store(args: argparse.Namespace) -> StateStore:
    return StateStore(args.state or default_path())


def _alive(pid: int | None) -> bool:
    """A controller other than this process is running with this pid."""
    return pid != os.getpid() and procs.alive(pid)


def _controller(state: RolloutState, store: StateStore) -> Any:
    from vllm_canary.rollout.controller import Controller
    from vllm_canary.rollout.metrics import PrometheusSource
    from vllm_canary.rollout.strategy import parse_strategy

    strategy = parse_strategy(state.strategy)
    source = build_source(state.target)
    query = source.query_value if isinstance(source, PrometheusSource) else None
    return Controller(strategy, state, store, build_actuator(state.target), source,
                      query=query)


def _line(state: RolloutState) -> str:
    steps = state.strategy.get("steps", [])
    weights = " ".join(f"{k}={v}%" for k, v in state.weights.items()) or "-"
    verdicts = " | ".join(f"{r['metric']}: {r['verdict']}" for r in state.results)
    step = f"step {min(state.step + 1, len(steps))}/{len(steps)}"
    return (f"[{time.strftime('%H:%M:%S')}] {state.phase.value:<11} {step} {weights}  "
            f"{state.message}" + (f"  [{verdicts}]" if verdicts else "") + _evidence(state)
            + (f"  ({state.source_error})" if state.source_error else ""))


def _evidence(state: RolloutState) -> str:
    """The error counts the analysis holds: the sum of its windows (per-series increases, the
    windows `vllm-canary status` shows too), e.g. '  errors v2 3/41 v1 0/370'."""
    test = state.analysis.get("tests", {}).get("error-rate")
    if not test or not (test.get("requests_c") or test.get("requests_b")):
        return ""
    canary = state.strategy.get("canary", "v2")
    stable = state.strategy.get("stable", "v1")
    return (f"  errors {canary} {test.get('events_c', 0)}/{test.get('requests_c', 0)} "
            f"{stable} {test.get('events_b', 0)}/{test.get('requests_b', 0)}")


def _check_listen(flag: str, host: str, port: int) -> None:
    """A port we are about to serve on: a mistake is one line, not a bind() traceback."""
    if not 0 < port < 65536:
        raise UserError(f"{flag} {port}: not a TCP port; give a number from 1 to 65535")
    if not procs.port_is_free(0, host):
        raise UserError(f"cannot listen on {host} (not one of this machine's addresses?)")
    if not procs.port_is_free(port, host):
        raise UserError(f"{flag} {port}: in use on {host}; stop what holds it or pick another")


def _follow(ctl: Any, args: argparse.Namespace) -> int:
    if getattr(args, "metrics_port", None):
        from prometheus_client import start_http_server

        _check_listen("--metrics-port", "127.0.0.1", args.metrics_port)

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=ctl.registry)
    last: list[Any] = ["", None]
    tty = sys.stdout.isatty()

    def show(state: RolloutState) -> None:
        line = _line(state)
        if tty:  # one line rewritten in place; a new line when the phase or step changes
            key = (state.phase, state.step)
            if last[1] is not None and key != last[1]:
                print()
            last[1] = key
            width = shutil.get_terminal_size().columns - 1
            print("\r\x1b[2K" + line[:width], end="", flush=True)
        elif line[11:] != last[0]:
            print(line, flush=True)
            last[0] = line[11:]

    phase = ctl.run(on_tick=show)
    if tty:
        print()
    if phase is Phase.PROMOTED:
        print(f"promoted: all traffic on {ctl.strategy.canary}")
        return EXIT_PROMOTED
    if phase is Phase.ABORTED:
        why = [e.message.removeprefix("aborting: ") for e in ctl.state.events
               if e.message.startswith("aborting: ")]
        print(f"aborted: all traffic back on {ctl.strategy.stable}"
              + (f" ({why[-1]})" if why else ""))
        return EXIT_ABORTED
    print(f"stopped in phase {phase.value}: {ctl.state.message}", file=sys.stderr)
    return EXIT_UNFINISHED


def _start(args: argparse.Namespace) -> int:
    from vllm_canary.rollout.strategy import load_strategy

    strategy = load_strategy(args.strategy)
    store = _store(args)
    old = store.load()
    if old is not None and not old.phase.terminal:
        if _alive(old.controller_pid):
            raise UserError(f"a rollout is already running (pid {old.controller_pid}): "
                            "see `vllm-canary rollout status`, or `abort` it")
        print(f"resuming the unfinished rollout in {store.path} at step {old.step + 1}")
        return _after(_follow(ctl := _controller(old, store), args), ctl, args)
    state = RolloutState(strategy=strategy.model_dump(by_alias=True, exclude_none=True),
                         target=target_from_args(args))
    store.request_path.unlink(missing_ok=True)
    ctl = _controller(state, store)
    print(f"rollout: {ctl.actuator.describe()}; metrics: {ctl.source.describe()}")
    return _after(_follow(ctl, args), ctl, args)


def _after(code: int, ctl: Any, args: argparse.Namespace) -> int:
    """--unload-on-abort: an aborted LoRA canary is unloaded (server/loracommands.py)."""
    if code == EXIT_ABORTED and getattr(args, "unload_on_abort", False):
        from vllm_canary.server.loracommands import unload_aborted

        unload_aborted(ctl.strategy.canary, ctl.strategy.stable)
    return code


def _load(args: argparse.Namespace) -> tuple[StateStore, RolloutState]:
    store = _store(args)
    state = store.load()
    if state is None:
        raise NotRunningError(f"no rollout recorded in {store.path}: "
                              "start one with `vllm-canary rollout start --strategy FILE`")
    return store, state


def _status(args: argparse.Namespace) -> int:
    _, state = _load(args)
    if args.json:
        print(json.dumps(state.model_dump(mode="json", exclude={"last_snapshot", "analysis"}),
                         indent=1))
        return 0
    alive = _alive(state.controller_pid)
    print(_line(state))
    print(f"controller: {'running, pid ' + str(state.controller_pid) if alive else 'not running'}")
    for r in state.results:
        print(f"  {r['metric']:<12} {r['verdict']:<12} p={r['p_value']:.3g}  {r['reason']}")
    for e in state.events[-5:]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e.at))} {e.phase.value}: {e.message}")
    return 0


def _request(args: argparse.Namespace) -> int:
    store, state = _load(args)
    action = args.rollout_command
    if state.phase.terminal and not state.aborting:
        raise UserError(f"the rollout is already {state.phase.value}")
    store.request(action)
    if _alive(state.controller_pid):
        for _ in range(300):  # bounded: the controller ticks every analysis interval
            time.sleep(0.1)
            now = store.load()
            if now is not None and not store.request_path.exists() and (
                    now.phase.terminal or now.aborting):
                print(f"{action}: {now.phase.value} ({now.message})")
                return 0
        print(f"{action}: requested; the controller (pid {state.controller_pid}) will act "
              "at its next tick")
        return 0
    ctl = _controller(state, store)
    for _ in range(10):
        phase = ctl.tick()
        if phase.terminal and not ctl.state.aborting:
            break
        time.sleep(1.0)
    print(f"{action}: {ctl.state.phase.value} ({ctl.state.message})")
    return 0 if ctl.state.phase.terminal else EXIT_UNFINISHED


def _resume(args: argparse.Namespace) -> int:
    store, state = _load(args)
    if state.phase.terminal and not state.aborting:
        raise UserError(f"the rollout is already {state.phase.value}")
    if _alive(state.controller_pid):
        if state.phase is not Phase.PAUSED:
            raise UserError(f"the rollout is {state.phase.value}, not paused")
        store.request("resume")
        print("resume: requested")
        return 0
    if state.phase is Phase.PAUSED:
        store.request("resume")
    print(f"resuming the rollout in {store.path} at step {state.step + 1}")
    return _follow(_controller(state, store), args)


def _analyze(args: argparse.Namespace) -> int:
    from vllm_canary.analysis.verdict import Verdict, combine
    from vllm_canary.rollout.analyzer import Analyzer
    from vllm_canary.rollout.metrics import PrometheusSource
    from vllm_canary.rollout.serve import AnalysisService
    from vllm_canary.rollout.strategy import AnalysisSpec, load_strategy

    strategy = load_strategy(args.strategy) if args.strategy else None
    spec = strategy.analysis if strategy else AnalysisSpec()
    stable, canary = (strategy.stable, strategy.canary) if strategy else ("v1", "v2")
    source = build_source(target_from_args(args, actuator_needed=False))
    query = source.query_value if isinstance(source, PrometheusSource) else None

    def factory() -> Analyzer:
        return Analyzer(spec, stable, canary, query)

    service = AnalysisService(factory, source, spec.interval)
    if args.serve:
        _check_listen("--port", args.host, args.port)
        from aiohttp import web

        print(f"analysis: http://{args.host}:{args.port}/analyze?metric=NAME "
              f"({', '.join(spec.metric_names())}, all); metrics: {source.describe()}", flush=True)
        web.run_app(service.app(), host=args.host, port=args.port, print=None)
        return 0
    deadline = time.monotonic() + args.duration
    while True:
        service.poll()
        if time.monotonic() >= deadline:
            break
        time.sleep(min(spec.interval, max(0.0, deadline - time.monotonic())))
    results = service.analyzer.results()
    if service.error:
        print(service.error, file=sys.stderr)
    for r in results:
        print(f"{r.metric:<12} {r.verdict.value:<12} p={r.p_value:.3g}  {r.reason}")
    verdict = combine(results)
    print(f"verdict: {verdict.value}")
    return {Verdict.PASS: 0, Verdict.FAIL: EXIT_ABORTED}.get(verdict, 3)
