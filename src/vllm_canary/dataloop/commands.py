"""Sub-commands of the dataloop area (registered by vllm_canary.cli): `sample`,
`shadow report`, `labelstudio export|push|pull`, `evaluate` and `loop daily`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from vllm_canary.errors import UserError

ENV_URL = "VLLM_CANARY_LABELSTUDIO_URL"
ENV_TOKEN = "VLLM_CANARY_LABELSTUDIO_TOKEN"


def parse_day(text: str | None, default: dt.date) -> dt.date:
    if not text:
        return default
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"--date {text!r} is not a date: use YYYY-MM-DD (UTC day)") from None


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def make_dir(path: Path, flag: str = "--out") -> None:
    """Create an output folder up front, so a bad `--out` is one line and not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the {flag} folder {path}: {exc.strerror}") from None


def check_url(url: str, flag: str) -> str:
    """A base URL the clients can use; without a scheme every request would fail one by one."""
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise UserError(f"{flag} {url!r} is not an http(s) URL: e.g. http://127.0.0.1:8000")
    return url


def check_policy(concurrency: int, timeout: float, retries: int) -> None:
    """The answering knobs `sample` and `loop daily` share; a negative retry count would
    ask nothing and record empty answers as if they had succeeded."""
    if concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if not timeout > 0:
        raise UserError("--timeout must be more than 0 seconds")
    if retries < 0:
        raise UserError("--retries must be 0 or more")


def _targets(args: argparse.Namespace) -> list:
    from vllm_canary.dataloop.generate import Target

    return [Target("v1", check_url(args.v1, "--v1"), args.model),
            Target("v2", check_url(args.v2, "--v2"), args.model)]


def cmd_sample(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import collect, generate

    if args.n < 1:
        raise UserError("--n must be at least 1")
    day = parse_day(args.date, today())
    if args.from_shadow:
        from vllm_canary.dataloop import shadow

        make_dir(args.out)
        res = shadow.sample_pairs(args.logs, day, args.n, args.out, seed=args.seed)
    else:
        if not args.v1 or not args.v2:
            raise UserError("sample needs --v1 and --v2 (the URLs that answer the prompts), "
                            "or --from-shadow to take both answers from a dark launch's logs")
        check_policy(args.concurrency, args.timeout, args.retries)
        targets = _targets(args)
        make_dir(args.out)
        policy = generate.Policy(args.concurrency, args.timeout, args.retries)
        res = collect.run_sample(args.logs, day, args.n, targets, args.out,
                                 seed=args.seed, policy=policy)
    s = res.stats
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(s.excluded.items())) or "none"
    print(f"read {s.lines} lines in {s.files} files ({s.invalid} invalid skipped; "
          f"excluded: {excluded})", file=sys.stderr)
    if s.files == 0:
        where = " ".join(str(p) for p in args.logs)
        print(f"warning: no request logs for {day} in {where}", file=sys.stderr)
    print(f"{res.path}: {res.items} items, {res.asked} asked now, "
          f"{res.failed_answers} failed answers")
    return 0


def cmd_shadow_report(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import shadowreport

    if args.baseline == args.candidate:
        raise UserError(f"--baseline and --candidate are both {args.baseline!r}")
    day = parse_day(args.date, today())
    make_dir(args.out)
    report = shadowreport.build(args.logs, day, args.baseline, args.candidate)
    paths = shadowreport.write(report, args.out)
    s = report.summary
    reasons = ", ".join(f"{k} {v}" for k, v in s["unpaired_by_reason"].items() if v) or "none"
    print(f"{s['pairs']} pairs, {s['unpaired']} unpaired ({reasons})")
    if s["pairs"]:
        print(f"exact match {s['exact_match']['rate']:.1%}, similarity "
              f"{s['similarity']['mean']:.3f}, {args.candidate} error rate "
              f"{s['candidate_error_rate']['rate']:.1%}")
    if s["stats"]["files"] == 0:
        print(f"warning: no request logs for {day} in "
              f"{' '.join(str(p) for p in args.logs)}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_shadow_mirror(args: argparse.Namespace) -> int:
    from vllm_canary.gateway.adminclient import AdminClient, token_from_args

    if not 0 <= args.percent <= 100:
        raise UserError(f"mirror percentage {args.percent:g} is not between 0 and 100")
    answer = AdminClient.locate(args.admin_url, token_from_args(args)).set_mirror(
        args.percent, args.subset)
    mirror = answer.get("mirror") or {}
    weights = "  ".join(f"{k}={v:g}" for k, v in (answer.get("weights") or {}).items())
    if mirror:
        print(f"mirroring {mirror['percent']:g}% of the split traffic to {mirror['subset']} "
              f"(weights {weights})")
    else:
        print(f"no mirror (weights {weights})")
    return 0


def _ls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get(ENV_URL),
                   help=f"Label Studio base URL (default ${ENV_URL})")
    p.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                   help=f"Label Studio API token (default ${ENV_TOKEN})")


def _need_url(args: argparse.Namespace) -> str:
    if not args.url:
        raise UserError(f"no Label Studio URL: pass --url or set {ENV_URL}")
    return check_url(str(args.url), "--url")


def cmd_ls_export(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import labelstudio, samplefile

    items = samplefile.load_samples(args.samples)
    tasks = labelstudio.tasks_for(items, args.mode, seed=args.seed)
    make_dir(args.out)
    (args.out / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n",
                                         encoding="utf-8")
    (args.out / "config.xml").write_text(labelstudio.config_for(args.mode), encoding="utf-8")
    print(f"{args.out / 'tasks.json'}: {len(tasks)} {args.mode} tasks; "
          f"labeling config {args.out / 'config.xml'}")
    return 0


def default_title(samples: Path, mode: str) -> str:
    return f"vllm-canary {samples.stem.removeprefix('samples_')} {mode}"


def cmd_ls_push(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import labelstudio, lsclient, samplefile

    items = samplefile.load_samples(args.samples)
    tasks = labelstudio.tasks_for(items, args.mode, seed=args.seed)
    title = args.title or default_title(args.samples, args.mode)
    res = lsclient.push(_need_url(args), args.token or "", tasks, args.mode, title, args.project)
    print(f"project {res.project_id} ({res.project_title!r}"
          f"{', created' if res.created_project else ''}): {res.imported} tasks imported, "
          f"{res.already_there} already there")
    return 0


def cmd_ls_pull(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import labelstudio, lsclient

    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder: name the labels file "
                        f"(e.g. {args.out / 'labels.json'})")
    make_dir(args.out.parent)
    tasks = lsclient.pull(_need_url(args), args.token or "", args.project)
    args.out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    labels = labelstudio.parse_export(tasks)
    for reason in labels.refused:
        print(f"refused: {reason}", file=sys.stderr)
    print(f"{args.out}: {len(tasks)} tasks, {len(labels.ratings)} ratings, "
          f"{len(labels.preferences)} pairwise judgements, {len(labels.refused)} refused")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop.decision import Rule
    from vllm_canary.dataloop.evaluate import run_evaluate

    if args.baseline == args.candidate:
        raise UserError(f"--baseline and --candidate are both {args.baseline!r}: "
                        "name two different versions")
    for flag, value in (("--margin", args.margin), ("--latency-budget", args.latency_budget),
                        ("--error-budget", args.error_budget)):
        if not value >= 0:
            raise UserError(f"{flag} must be 0 or more")
    if not 0 <= args.win_margin < 0.5:
        raise UserError("--win-margin must be at least 0 and below 0.5")
    if args.min_pairs < 1:
        raise UserError("--min-pairs must be at least 1")
    if args.prometheus:
        check_url(args.prometheus, "--prometheus")
    make_dir(args.out)
    rule = Rule(margin=args.margin, win_margin=args.win_margin, min_pairs=args.min_pairs,
                latency_budget=args.latency_budget, error_budget=args.error_budget)
    ev, decision, doc = run_evaluate(args.samples, args.labels, args.out, rule,
                                   prometheus=args.prometheus, baseline=args.baseline,
                                   candidate=args.candidate)
    for reason in ev.refused[:20]:
        print(f"refused: {reason}", file=sys.stderr)
    if len(ev.refused) > 20:
        print(f"refused: ... {len(ev.refused) - 20} more (see report.html)", file=sys.stderr)
    print(f"decision: {decision.decision}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    print(f"wrote {args.out / 'report.csv'}, {args.out / 'decision.json'}, "
          f"{args.out / 'report.html'}")
    if args.mlflow:
        from vllm_canary.dataloop import tracking

        run_id = tracking.log_run(args.mlflow, args.mlflow_experiment, doc, args.out)
        print(f"MLflow run {run_id} in experiment {args.mlflow_experiment!r}")
    return decision.exit_code


def cmd_loop_daily(args: argparse.Namespace) -> int:
    from vllm_canary.dataloop import daily

    return daily.run(args)


def register(sub: argparse._SubParsersAction) -> None:
    from vllm_canary.gateway.adminclient import add_token_flags

    """Add this area's sub-commands to the top-level parser."""
    p = sub.add_parser("sample", help="sample a day's real prompts and answer them with v1 and v2")
    p.add_argument("--logs", type=Path, nargs="+", required=True,
                   help="request-log folder(s) of the servers (`serve --log-dir`)")
    p.add_argument("--date", help="UTC day YYYY-MM-DD (default: today)")
    p.add_argument("--n", type=int, default=100, help="prompts to sample (default 100)")
    p.add_argument("--v1", help="base URL of the stable version (not with --from-shadow)")
    p.add_argument("--v2", help="base URL of the candidate version (not with --from-shadow)")
    p.add_argument("--from-shadow", action="store_true",
                   help="pairs from a dark launch: v1's served and v2's shadow answers as "
                        "logged (no regeneration)")
    p.add_argument("--out", type=Path, default=Path("annotations"), help="output folder")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same sample)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=2, help="retries on transient failures")
    p.add_argument("--model", help="model name to send (default: each server's default)")
    p.set_defaults(handler=cmd_sample)

    sh = sub.add_parser("shadow", help="dark launch: compare v2's shadow answers with v1's")
    sh_sub = sh.add_subparsers(dest="shadow_command", metavar="ACTION", required=True)
    r = sh_sub.add_parser("report", help="pairs joined by request id → pairs.csv, "
                          "summary.json, report.html")
    r.add_argument("--logs", type=Path, nargs="+", required=True,
                   help="request-log folder(s) of both servers")
    r.add_argument("--date", help="UTC day YYYY-MM-DD (default: today)")
    r.add_argument("--out", type=Path, default=Path("reports/shadow"), help="report folder")
    r.add_argument("--baseline", default="v1", help="the served version")
    r.add_argument("--candidate", default="v2", help="the shadowed version")
    r.set_defaults(handler=cmd_shadow_report)
    m = sh_sub.add_parser("mirror", help="set the running gateway's mirror (0 removes it)")
    m.add_argument("percent", type=float, help="percent of the split traffic to mirror")
    m.add_argument("--subset", default="v2", help="the version that answers in shadow")
    m.add_argument("--admin-url", help="gateway admin API (default: the running local stack)")
    add_token_flags(m)
    m.set_defaults(handler=cmd_shadow_mirror)

    ls = sub.add_parser("labelstudio", help="Label Studio: export tasks, push, pull annotations")
    ls_sub = ls.add_subparsers(dest="ls_command", metavar="ACTION", required=True)
    e = ls_sub.add_parser("export", help="write tasks.json (import file) and config.xml")
    e.add_argument("--samples", type=Path, required=True)
    e.add_argument("--mode", choices=["rating", "pairwise"], default="rating")
    e.add_argument("--out", type=Path, default=Path("ls"))
    e.add_argument("--seed", type=int, default=0, help="seed of the pairwise side coin")
    e.set_defaults(handler=cmd_ls_export)
    p = ls_sub.add_parser("push", help="create or reuse a project and import missing tasks")
    p.add_argument("--samples", type=Path, required=True)
    p.add_argument("--mode", choices=["rating", "pairwise"], default="rating")
    p.add_argument("--project", type=int, help="existing project id (default: find by title)")
    p.add_argument("--title", help="project title (default: 'vllm-canary YYYYMMDD MODE')")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairwise side coin")
    _ls_args(p)
    p.set_defaults(handler=cmd_ls_push)
    p = ls_sub.add_parser("pull", help="export a project's annotations to labels.json")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--out", type=Path, default=Path("labels.json"))
    _ls_args(p)
    p.set_defaults(handler=cmd_ls_pull)

    p = sub.add_parser("evaluate", help="scores, tests, decision and report from the labels "
                       "(exit 0 promote, 3 continue, 4 rollback)")
    p.add_argument("--samples", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True, help="Label Studio JSON export")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--prometheus", help="Prometheus URL for the day's latency and error rate")
    p.add_argument("--baseline", default="v1")
    p.add_argument("--candidate", default="v2")
    p.add_argument("--margin", type=float, default=0.25,
                   help="non-inferiority margin in score points (default 0.25)")
    p.add_argument("--win-margin", type=float, default=0.05,
                   help="pairwise: v2 win share may be ≥ 0.5 minus this (default 0.05)")
    p.add_argument("--min-pairs", type=int, default=20,
                   help="prompts judged for both versions before deciding (default 20)")
    p.add_argument("--latency-budget", type=float, default=0.2,
                   help="allowed p95 latency increase, fraction (default 0.2)")
    p.add_argument("--error-budget", type=float, default=0.02,
                   help="allowed error-rate increase, absolute (default 0.02)")
    p.add_argument("--mlflow", metavar="TRACKING_URI",
                   help="also log the evaluation as an MLflow run (needs the mlflow extra)")
    p.add_argument("--mlflow-experiment", default="vllm-canary-quality")
    p.set_defaults(handler=cmd_evaluate)

    loop = sub.add_parser("loop", help="scheduled data-loop jobs")
    loop_sub = loop.add_subparsers(dest="loop_command", metavar="JOB", required=True)
    d = loop_sub.add_parser("daily", help="what the 02:00 CronJob runs: sample yesterday "
                            "(+ push to Label Studio when configured)")
    d.add_argument("--config", type=Path, help="YAML settings file (keys as the flags)")
    d.add_argument("--logs", type=Path, nargs="+")
    d.add_argument("--out", type=Path)
    d.add_argument("--date", help="UTC day YYYY-MM-DD (default: yesterday)")
    d.add_argument("--n", type=int)
    d.add_argument("--v1")
    d.add_argument("--v2")
    d.add_argument("--seed", type=int)
    d.add_argument("--mode", choices=["rating", "pairwise"])
    d.add_argument("--from-shadow", dest="from_shadow", action="store_const", const=True,
                   help="sample a dark launch's logged pairs instead of asking --v1/--v2")
    d.add_argument("--labelstudio-url", dest="labelstudio_url")
    d.add_argument("--labelstudio-token", dest="labelstudio_token")
    d.set_defaults(handler=cmd_loop_daily)
