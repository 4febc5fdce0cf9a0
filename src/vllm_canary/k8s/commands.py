"""Sub-commands of the k8s area: `render`, `validate`, `doctor` (registered by vllm_canary.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_canary.errors import UserError

DEFAULT_CHART = Path("deploy/helm/vllm-canary")


def _chart_args(p: argparse.ArgumentParser, optional_chart: bool = False) -> None:
    p.add_argument("chart", type=Path, nargs="?", default=None if optional_chart else DEFAULT_CHART,
                   help=f"chart folder (default {DEFAULT_CHART})")
    p.add_argument("-f", "--values", dest="values_files", type=Path, action="append", default=[],
                   help="values file (repeatable, later wins)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="values on the command line, e.g. versions[1].weight=20")
    p.add_argument("--release", default="vllm", help="release name (default vllm)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default default)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the top-level parser."""
    p = sub.add_parser("render", help="render the Helm chart offline (real Helm v4 engine)")
    _chart_args(p)
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    p.set_defaults(handler=run_render)

    p = sub.add_parser("validate", help="render and check every object against its schema")
    _chart_args(p)
    p.add_argument("--kube-version", help="Kubernetes version of the built-in schemas "
                   "(default: the newest kubernetes-validate knows)")
    p.add_argument("--crd-dir", type=Path, help="folder of CRD YAML files "
                   "(default $VLLM_CANARY_CRD_DIR, ../shared/schemas/crds, or the bundled copy)")
    p.set_defaults(handler=run_validate)

    p = sub.add_parser("doctor", help="check a release against the troubleshooting table")
    _chart_args(p, optional_chart=True)
    p.add_argument("--kube", action="store_true", help="check the live objects in --namespace")
    p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--load-seconds", type=int, default=600,
                   help="longest model load the probes must allow (default 600)")
    p.set_defaults(handler=run_doctor)


def _render(args: argparse.Namespace, merged: dict | None = None):  # -> Rendered
    """Render the chart with `merged` values (default: those the flags name). Imported lazily:
    helm loads a C library."""
    from vllm_canary.k8s import values
    from vllm_canary.k8s.render import render_chart

    chart = args.chart or DEFAULT_CHART
    if merged is None:
        merged = values.collect(args.values_files, args.sets)
    return render_chart(chart, merged, release=args.release, namespace=args.namespace)


def run_render(args: argparse.Namespace) -> int:
    from vllm_canary.k8s.render import to_yaml

    text = to_yaml(_render(args))
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from vllm_canary.k8s import values
    from vllm_canary.k8s.render import lint
    from vllm_canary.k8s.validate import check_kube_version, validate_all

    if args.crd_dir is not None and not args.crd_dir.is_dir():
        raise UserError(f"--crd-dir {args.crd_dir} is not a folder")
    if args.kube_version is not None:
        check_kube_version(args.kube_version)
    merged = values.collect(args.values_files, args.sets)
    rendered = _render(args, merged)
    lint_findings = lint(args.chart, merged, args.namespace)
    for finding in lint_findings:
        print(f"LINT {finding}")
    problems = validate_all(rendered.manifests, kube_version=args.kube_version,
                            crd_dir=args.crd_dir)
    for problem in problems:
        print(f"INVALID {problem}")
    count = len(rendered.manifests)
    if problems or lint_findings:
        print(f"{len(problems)} problem(s) in {count} objects, {len(lint_findings)} lint "
              "finding(s)", file=sys.stderr)
        return 1
    print(f"ok: helm lint --strict clean; {count} objects valid (built-in kinds strict, "
          "custom kinds against CRD schemas)")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from vllm_canary.k8s.doctor import run_checks

    if args.load_seconds < 1:
        raise UserError("--load-seconds must be at least 1 (the model load time in seconds)")
    if args.kube:
        if args.chart is not None or args.values_files or args.sets:
            raise UserError("--kube reads the live release; drop the chart and values arguments")
        from vllm_canary.k8s.kube import live_objects

        manifests = live_objects(args.namespace, kubeconfig=args.kubeconfig, context=args.context)
        where = f"namespace {args.namespace} (live)"
    else:
        manifests = _render(args).manifests
        where = str(args.chart or DEFAULT_CHART)
    findings = run_checks(manifests, namespace=args.namespace, load_seconds=args.load_seconds)
    for finding in findings:
        print(f"FAIL {finding}")
    if findings:
        print(f"{len(findings)} finding(s) in {where}", file=sys.stderr)
        return 1
    print(f"ok: {len(manifests)} objects in {where} pass every troubleshooting check")
    return 0
