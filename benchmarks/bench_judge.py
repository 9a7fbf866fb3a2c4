"""Which keep rule finds the most real improvement for the GPU time, at a given noise level?

    python benchmarks/bench_judge.py [--trajectories 300] [--budget-runs 96] [--sigmas 0.002 0.005 0.01]

A simulated research session: an agent proposes changes one after another; each run of a
change reports its true val_bpb plus Gaussian run-to-run noise σ. The decisions are made by
gitar's own judge (gitar.loop.judge.judge, gitar.loop.judge.sigma_of, gitar.review.noise.pooled_spread):
nothing of the rules is re-implemented here. Only the world is simulated.

The world (fixed, so noise levels can be compared):
- by default (Mix) 70% of changes do nothing (true effect 0); 30% are real: two thirds improve
  val_bpb by an exponential amount with mean 0.004, one third make it worse by the same law;
- changes add up: a kept change moves the true value of the branch by its effect;
- each run costs RUN_MINUTES of GPU; a session has --budget-runs runs in all (8 hours);
- strict measures the baseline once (autoresearch's practice); margin and confirm measure it
  BASELINE_REPEAT times first (`gitar run --repeat 3`) and use the branch's pooled measured
  noise with noise_floor 0, as gitar does. A confirm sequence cut off by the budget decides nothing.

Per policy and σ: the false-keep rate on null changes, the true-keep rate on real
improvements, the rate of kept regressions, GPU minutes per decision, and the TRUE gain of
the final best (sum of the true effects of the kept changes, in val_bpb; higher is better),
with the optimism of the recorded best (recorded val_bpb below the truth, i.e. luck kept).
Random streams are seeded per trajectory and shared by all policies (the same changes and
the same noise draw for the j-th run of the i-th change), so differences are the rules'.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitar.loop.judge import Best, Policy, judge, sigma_of  # noqa: E402
from gitar.review.noise import Noise, pooled_spread  # noqa: E402
from gitar.store.records import KEEP, UNDECIDED  # noqa: E402

RUN_MINUTES = 5.0
BASELINE_REPEAT = 3
MAX_CANDIDATES = 200  # more than any budget can try
MAX_RUNS_PER_CANDIDATE = 8
START = 1.0

POLICIES: list[tuple[str, Policy]] = [
    ("strict", Policy("strict")),
    ("margin k=1", Policy("margin", margin_k=1)),
    ("margin k=2", Policy("margin", margin_k=2)),
    ("confirm k=1 M=2", Policy("confirm", margin_k=1, confirm_runs=2)),
    ("confirm k=1 M=3", Policy("confirm", margin_k=1, confirm_runs=3)),
    ("confirm k=2 M=2", Policy("confirm", margin_k=2, confirm_runs=2)),
    ("confirm k=2 M=3", Policy("confirm", margin_k=2, confirm_runs=3)),
]


@dataclass(frozen=True)
class Mix:
    """What kind of changes the agent proposes."""

    null_share: float = 0.7
    improve_share_of_real: float = 2 / 3
    effect_mean: float = 0.004  # val_bpb: the mean size of a real change, improvement or regression


@dataclass
class World:
    """One trajectory's changes and noise, the same for every policy."""

    effects: np.ndarray  # true effect of change i (negative is better)
    noise: np.ndarray  # [i, j]: the noise of the j-th run of change i
    baseline_noise: np.ndarray


def make_world(seed: int, trajectory: int, sigma: float, mix: Mix) -> World:
    rng = np.random.default_rng([seed, trajectory])
    kind = rng.random(MAX_CANDIDATES)
    size = rng.exponential(mix.effect_mean, MAX_CANDIDATES)
    improve = rng.random(MAX_CANDIDATES) < mix.improve_share_of_real
    effects = np.where(kind < mix.null_share, 0.0, np.where(improve, -size, size))
    # Standard normals scaled by σ: the same draws at every noise level, only their size differs.
    noise = rng.standard_normal((MAX_CANDIDATES, MAX_RUNS_PER_CANDIDATE)) * sigma
    baseline_noise = rng.standard_normal(BASELINE_REPEAT) * sigma
    return World(effects=effects, noise=noise, baseline_noise=baseline_noise)


@dataclass
class Tally:
    nulls: int = 0
    nulls_kept: int = 0
    improvements: int = 0
    improvements_kept: int = 0
    regressions: int = 0
    regressions_kept: int = 0
    decisions: int = 0
    candidate_runs: int = 0
    gains: list[float] = field(default_factory=list)  # per trajectory: true improvement of the final best
    optimism: list[float] = field(default_factory=list)  # per trajectory: true − recorded value of the best

    def count(self, effect: float, kept: bool) -> None:
        self.decisions += 1
        if effect == 0.0:
            self.nulls += 1
            self.nulls_kept += kept
        elif effect < 0:
            self.improvements += 1
            self.improvements_kept += kept
        else:
            self.regressions += 1
            self.regressions_kept += kept


def _noise(groups: list[list[float]]) -> Noise | None:
    spread = pooled_spread(groups)
    if spread is None:
        return None
    return Noise(n=spread.n, std=spread.std, mad=spread.mad, commit="sim", commits=len(groups))


def simulate(policy: Policy, world: World, budget_runs: int, tally: Tally) -> None:
    """One session under one policy, decisions by gitar's judge."""
    true_best = START
    repeat = BASELINE_REPEAT if policy.needs_noise else 1
    baseline = [START + float(x) for x in world.baseline_noise[:repeat]]
    best = Best("sim-0", sum(baseline) / len(baseline), len(baseline))
    groups: list[list[float]] = [baseline] if len(baseline) > 1 else []
    sigma = sigma_of(_noise(groups), policy.noise_floor)
    used = repeat
    for i in range(MAX_CANDIDATES):
        if used >= budget_runs:
            break
        effect = float(world.effects[i])
        runs: list[float] = []
        verdict = None
        while used < budget_runs:
            value = true_best + effect + float(world.noise[i, len(runs)])
            used += 1
            tally.candidate_runs += 1
            verdict = judge("ok", value, best, policy, sigma, earlier=runs)
            runs.append(value)
            if verdict.status != UNDECIDED:
                break
        if verdict is None or verdict.status == UNDECIDED:
            break  # the budget ran out mid-confirm: no decision
        kept = verdict.status == KEEP
        tally.count(effect, kept)
        if len(runs) > 1:
            groups.append(runs)
            sigma = sigma_of(_noise(groups), policy.noise_floor)
        if kept:
            true_best += effect
            best = Best(f"sim-{i + 1}", sum(runs) / len(runs), len(runs))
    tally.gains.append(START - true_best)
    tally.optimism.append(true_best - best.val_bpb)


def _rate(k: int, n: int) -> str:
    return f"{100 * k / n:5.1f}%" if n else "   - "


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trajectories", type=int, default=300)
    ap.add_argument("--budget-runs", type=int, default=96, help="runs per session (96 × 5 min = 8 h)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null-share", type=float, default=Mix.null_share, help="share of changes that do nothing")
    ap.add_argument("--improve-share", type=float, default=Mix.improve_share_of_real,
                    help="share of the real changes that improve val_bpb (the rest make it worse)")
    ap.add_argument("--effect-mean", type=float, default=Mix.effect_mean, help="mean size of a real effect")
    args = ap.parse_args()
    mix = Mix(args.null_share, args.improve_share, args.effect_mean)

    t0 = time.perf_counter()
    print(f"{args.trajectories} sessions of {args.budget_runs} runs ({args.budget_runs * RUN_MINUTES / 60:g} GPU-hours) "
          f"per cell; changes: {mix.null_share:.0%} null, real ones exponential with mean {mix.effect_mean} "
          f"({mix.improve_share_of_real:.0%} of them improvements); seed {args.seed}")
    print()
    print("| σ | policy | false keeps (null) | true keeps (better) | kept regressions | GPU-min/decision "
          "| decisions | true gain of final best | optimism of recorded best |")
    print("|---|---|---|---|---|---|---|---|---|")
    winners: list[str] = []
    for sigma in args.sigmas:
        worlds = [make_world(args.seed, t, sigma, mix) for t in range(args.trajectories)]
        best_name, best_gain = "", -math.inf
        for name, policy in POLICIES:
            tally = Tally()
            for world in worlds:
                simulate(policy, world, args.budget_runs, tally)
            gains = np.array(tally.gains)
            mean_gain = float(gains.mean())
            se = float(gains.std(ddof=1) / math.sqrt(len(gains)))
            per_decision = RUN_MINUTES * tally.candidate_runs / max(tally.decisions, 1)
            print(f"| {sigma:g} | {name} | {_rate(tally.nulls_kept, tally.nulls)} "
                  f"| {_rate(tally.improvements_kept, tally.improvements)} "
                  f"| {_rate(tally.regressions_kept, tally.regressions)} | {per_decision:.2f} "
                  f"| {tally.decisions / args.trajectories:.1f} | {mean_gain:.4f} ± {se:.4f} "
                  f"| {float(np.mean(tally.optimism)):+.4f} |")
            if mean_gain > best_gain:
                best_name, best_gain = name, mean_gain
        winners.append(f"σ {sigma:g}: {best_name} (true gain {best_gain:.4f})")
    print()
    print("highest true gain: " + "; ".join(winners))
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
