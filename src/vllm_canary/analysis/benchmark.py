"""`vllm-canary bench canary`: our sequential analysis against a faithful re-implementation
of Flagger's analysis (Istio tutorial settings) on the same simulated traces, many seeds.

Writes <out>/canary.md (the table) and <out>/canary_power.png (power curves).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vllm_canary.analysis import flagger, progressive
from vllm_canary.analysis.simulate import Scenario, TraceSim

ISSUE_STEPS = [(10, 120), (50, 120), (100, 0)]  # the issue's strategy: 10% 2m, 50% 2m, 100%
HOLD10_STEPS = [(10, 600), (100, 0)]  # analysis held at 10% for 10 minutes
TOLERANCE = 2.0  # the promotion gate of the third variant: shown < 2x the baseline's rate
TIMEOUT_FACTOR = 5.0  # an analysis step waits up to 5x its duration for enough evidence
WARMUP_REQUESTS = 1200  # a minute of baseline traffic before the rollout starts

BASE = Scenario(name="A/A (1% errors, p95 273 ms)")
SCENARIOS = [
    BASE,
    replace(BASE, name="A/A with quiet periods", quiet_share=0.5),
    replace(BASE, name="errors 1% -> 2%", canary_error_rate=0.02),
    replace(BASE, name="latency +50% (p95)", latency_factor=1.5),
    replace(BASE, name="errors 1% -> 5%", canary_error_rate=0.05),
]


READING = """\
- Scenarios: 20 req/s with per-minute rate wobble (20%) and shared per-minute latency load
  (10%); baseline 1% errors, log-normal latency (median 120 ms, sigma 0.5, p95 273 ms,
  p99 384 ms) observed through Istio's default millisecond buckets; "quiet periods" stop all
  traffic for 1-4 minutes in half the runs. Arrivals and load are identical for every method.
- Flagger (tutorial): interval 1m, threshold 5, stepWeight 10, maxWeight 50, request-success-rate
  >= 99%, request-duration p99 <= 500 ms (histogram_quantile over the canary's last minute),
  no data = failed check, failedChecks never reset, rollback on the tick after the 5th failure.
- ours (issue strategy): setWeight 10, analysis 2m, setWeight 50, analysis 2m, setWeight 100;
  error-rate and latency-p95 sequential tests, alpha 0.01 split over both, minSamples 50,
  a minute of baseline traffic before the rollout to pick the latency threshold.
- ours (held at 10%): one 10-minute analysis at 10% weight, to isolate the statistics' speed.
- "undecided" = still waiting (paused for more data) at the end of the horizon.
- Time is measured from the moment the canary first gets traffic (10%).
- Power curves: bench/results/canary_power.png (P(rollback) against effect size)."""


@dataclass
class Outcome:
    method: str
    scenario: str
    bad: bool
    promoted: float
    aborted: float
    undecided: float
    median_right_s: float  # among runs that made the right decision
    median_all_s: float  # wrong or no decision counted as never


def run_ours(sim: TraceSim, seconds: int, steps: list[tuple[int, int]], alpha: float,
             name: str, tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = sim.rng_for(name)
    ours = progressive.SequentialRollout(sim.runs, steps, alpha=alpha, tolerance=tolerance,
                                         timeout_factor=TIMEOUT_FACTOR)
    ours.warm_up(sim.bounds, rng.multinomial(np.full(sim.runs, WARMUP_REQUESTS),
                                             sim.bucket_probs(0, 1.0)))
    for t in range(seconds):
        if not (ours.phase == progressive.PROGRESSING).any():
            break
        w = sim.serve(t, ours.weight(), rng)
        ours.observe(t + 1, sim.bounds, w.n_c, w.n_b, w.err_c, w.err_b, w.hist_c, w.hist_b)
    return ours.phase, ours.decided_at


def run_flagger(sim: TraceSim, seconds: int) -> tuple[np.ndarray, np.ndarray]:
    rng = sim.rng_for("flagger")
    fl = flagger.FlaggerAnalysis(sim.runs)
    interval = fl.s.interval_s
    req = np.zeros(sim.runs, dtype=np.int64)
    err = np.zeros(sim.runs, dtype=np.int64)
    hist = np.zeros((sim.runs, len(sim.bounds) + 1), dtype=np.int64)
    for t in range(seconds):
        if not (fl.phase == flagger.PROGRESSING).any():
            break
        weight = np.where(fl.phase == flagger.PROGRESSING, fl.weight, 0)
        w = sim.serve(t, weight, rng)
        req += w.n_c
        err += w.err_c
        hist += w.hist_c
        if (t + 1) % interval == 0:
            fl.tick(t + 1, req, err, sim.bounds, np.cumsum(hist, axis=1))
            req[:] = 0
            err[:] = 0
            hist[:] = 0
    phase = np.select([fl.phase == flagger.PROMOTED, fl.phase == flagger.ROLLED_BACK],
                      [progressive.PROMOTED, progressive.ABORTED], progressive.PROGRESSING)
    return phase, fl.decided_at


def summarise(method: str, sc: Scenario, phase: np.ndarray, at: np.ndarray) -> Outcome:
    bad = sc.canary_error_rate > sc.error_rate or sc.latency_factor > 1.0
    right = phase == (progressive.ABORTED if bad else progressive.PROMOTED)
    times = np.where(right, at, np.inf)
    return Outcome(
        method, sc.name, bad,
        promoted=float(np.mean(phase == progressive.PROMOTED)),
        aborted=float(np.mean(phase == progressive.ABORTED)),
        undecided=float(np.mean(np.isin(phase, [progressive.PROGRESSING, progressive.PAUSED]))),
        median_right_s=float(np.median(at[right])) if right.any() else float("inf"),
        median_all_s=float(np.median(times)),
    )


def evaluate(sc: Scenario, runs: int, seconds: int, seed: int, alpha: float) -> list[Outcome]:
    sim = TraceSim(sc, runs, seconds, seed)
    out = [summarise("Flagger (tutorial)", sc, *run_flagger(sim, seconds))]
    out.append(summarise("ours (issue strategy)", sc,
                         *run_ours(sim, seconds, ISSUE_STEPS, alpha, "ours")))
    out.append(summarise("ours (issue strategy, tolerance 2x)", sc,
                         *run_ours(sim, seconds, ISSUE_STEPS, alpha, "ours-tol", TOLERANCE)))
    out.append(summarise("ours (held at 10%)", sc,
                         *run_ours(sim, seconds, HOLD10_STEPS, alpha, "ours-hold10")))
    return out


def fmt_s(v: float) -> str:
    return "never" if not np.isfinite(v) else f"{v / 60:.1f} min"


def table(rows: list[Outcome], runs: int, alpha: float) -> str:
    lines = [
        "| scenario | method | promoted | aborted | undecided | median time to right decision "
        "(among right) | median (wrong = never) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.method} | {r.promoted:.1%} | {r.aborted:.1%} | "
                     f"{r.undecided:.1%} | {fmt_s(r.median_right_s)} | {fmt_s(r.median_all_s)} |")
    return "\n".join(lines)


def speedups(rows: list[Outcome]) -> list[str]:
    out = []
    by = {(r.scenario, r.method): r for r in rows}
    for sc in {r.scenario for r in rows if r.bad}:
        fl = by[(sc, "Flagger (tutorial)")].median_all_s
        for m in ("ours (issue strategy)", "ours (issue strategy, tolerance 2x)",
                  "ours (held at 10%)"):
            ours = by[(sc, m)].median_all_s
            ratio = fl / ours if np.isfinite(ours) and ours > 0 else 0.0
            out.append(f"- {sc}: {m} is {ratio:.1f}x faster than Flagger "
                       f"(median {fmt_s(ours)} vs {fmt_s(fl)})")
    return sorted(out)


def sprt_bound_s(p0: float, p1: float, canary_rps: float, alpha: float) -> float:
    """Wald's approximation of the expected time of the best possible test (an SPRT of p1
    against p0 with the baseline's rate known exactly) to reach evidence 1/alpha."""
    kl = p1 * np.log(p1 / p0) + (1 - p1) * np.log((1 - p1) / (1 - p0))
    return float(np.log(1 / alpha) / (kl * canary_rps))


def against_goal(rows: list[Outcome], alpha: float) -> str:
    """The issue's goal, line by line, from the measured rows."""
    by = {(r.scenario, r.method): r for r in rows}
    fl, ours, tol = "Flagger (tutorial)", "ours (issue strategy)", \
        "ours (issue strategy, tolerance 2x)"
    aa = BASE.name
    lines = [
        f"- A/A false rollbacks: ours {by[(aa, ours)].aborted:.1%} "
        f"(tolerance 2x: {by[(aa, tol)].aborted:.1%}; held at 10% for 10 min: "
        f"{by[(aa, 'ours (held at 10%)')].aborted:.1%}) against alpha = {alpha:.0%}; "
        f"Flagger {by[(aa, fl)].aborted:.1%} (with quiet periods: "
        f"{by[('A/A with quiet periods', fl)].aborted:.1%}).",
    ]
    for sc in ("latency +50% (p95)", "errors 1% -> 2%"):
        f, o = by[(sc, fl)].median_all_s, by[(sc, ours)].median_all_s
        ratio = f / o if np.isfinite(o) and o > 0 else 0.0
        verdict = "met" if ratio >= 3 else "NOT met"
        lines.append(f"- {sc}: ours {fmt_s(o)} vs Flagger {fmt_s(f)} median to rollback "
                     f"= {ratio:.1f}x (goal >= 3x: {verdict}).")
    bound = sprt_bound_s(0.01, 0.02, 20 * 0.10, alpha)
    bound50 = sprt_bound_s(0.01, 0.02, 20 * 0.50, alpha)
    lines.append(
        f"- Why 1% -> 2% errors cannot be 3x faster at 10% weight and 20 req/s: the canary "
        f"serves 2 req/s, about 1.2 vs 2.4 errors a minute. Even the optimal test (Wald's SPRT, "
        f"baseline rate known exactly) needs on average {bound / 60:.1f} min at 10% weight "
        f"({bound50 / 60:.1f} min at 50%) to reach evidence 1/alpha. Flagger's 7 min is not "
        f"detection: it rolls back about half of *healthy* canaries too, because the 99% "
        f"success-rate threshold sits on the 1% baseline. With the issue's 4-minute strategy "
        f"ours promotes {by[('errors 1% -> 2%', ours)].promoted:.0%} of these canaries "
        f"(missed regressions); `tolerance: 2` on the last gate cuts that to "
        f"{by[('errors 1% -> 2%', tol)].promoted:.1%} at Flagger's speed "
        f"({fmt_s(by[('errors 1% -> 2%', tol)].median_all_s)}) with "
        f"{by[(aa, tol)].aborted:.1%} false rollbacks, at the price of healthy canaries "
        f"waiting longer (A/A: {by[(aa, tol)].undecided:.0%} still paused for more data after "
        f"the gate's {TIMEOUT_FACTOR:.0f}x timeout).")
    return "\n".join(lines)


def power_curves(runs: int, seconds: int, seed: int, alpha: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [
        ("canary error rate (baseline 1%)", "canary_error_rate",
         [0.01, 0.0125, 0.015, 0.02, 0.03, 0.05]),
        ("canary latency factor", "latency_factor", [1.0, 1.1, 1.2, 1.3, 1.5, 2.0]),
    ]
    for ax, (label, field, values) in zip(axes, panels, strict=True):
        curves: dict[str, list[float]] = {}
        for i, v in enumerate(values):
            sim = TraceSim(replace(BASE, **{field: v}), runs, seconds, seed + 1000 + i)
            for name, (phase, _) in {
                "Flagger (tutorial)": run_flagger(sim, seconds),
                "ours (issue strategy)": run_ours(sim, seconds, ISSUE_STEPS, alpha, "ours"),
                "ours (tolerance 2x)": run_ours(sim, seconds, ISSUE_STEPS, alpha, "ours-tol",
                                                TOLERANCE),
                "ours (held at 10%)": run_ours(sim, seconds, HOLD10_STEPS, alpha, "ours-hold10"),
            }.items():
                curves.setdefault(name, []).append(float(np.mean(phase == progressive.ABORTED)))
        for name, ys in curves.items():
            ax.plot(values, ys, marker="o", label=name)
        ax.axhline(alpha, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("P(rollback)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"P(rollback) at 20 req/s, 10% first step, {runs} runs per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Run every scenario, print the table, write it (and the power curves) under --out."""
    started = time.monotonic()
    seconds = args.minutes * 60
    rows: list[Outcome] = []
    for i, sc in enumerate(SCENARIOS):
        rows.extend(evaluate(sc, args.runs, seconds, args.seed + i, args.alpha))
        print(f"  {sc.name}: done ({time.monotonic() - started:.0f}s)", flush=True)
    text = table(rows, args.runs, args.alpha)
    notes = "\n".join(speedups(rows))
    print(text)
    print(notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "canary.md").write_text(
        f"# bench canary: sequential analysis vs Flagger's method\n\n"
        f"`vllm-canary bench canary --runs {args.runs}` (seed {args.seed}, alpha {args.alpha}, "
        f"horizon {args.minutes} min, 20 req/s, first canary step 10%).\n\n{text}\n\n"
        f"Speed on regressions (median time to the right decision, wrong = never):\n\n{notes}\n"
        f"\n## Against the issue's goal\n\n{against_goal(rows, args.alpha)}\n"
        f"\n## How to read it\n\n{READING}\n"
    )
    if not args.no_plot:
        power_curves(max(100, args.runs // 5), seconds, args.seed, args.alpha,
                     args.out / "canary_power.png")
    print(f"wrote {args.out / 'canary.md'} in {time.monotonic() - started:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from vllm_canary.cli import main as cli

    return cli(["bench", "canary", *(argv or [])])
