"""The referee: decides keep or discard from a candidate's runs, the branch's best and its noise.

The best of a branch is its tip (every discard resets the branch to it), and the
best's value is the mean of the successful runs recorded for that commit on that
branch, so re-measuring the best (`gitar run --repeat N`) refines the bar instead of
leaving a lucky minimum in place.

Three keep rules (ground.json experiment.keep_rule), all pure functions of numbers:

- strict: keep iff val_bpb < best (autoresearch's rule). Identical runs differ by more
  than many real improvements, so this keeps noise and ratchets the bar on luck.
- margin: keep iff best − val_bpb > k·σ (k = experiment.margin_k).
- confirm: decide on one run when it is clear, measure more when it is not. Judged on
  the mean of the candidate's n runs against the mean of the best's m runs:
    mean ≥ best                              → discard (not an improvement at all);
    best − mean > k·σ·sqrt(1/n + 1/m)        → keep (k two-sample standard errors);
    otherwise, after 1 + experiment.confirm_runs runs → discard;
    otherwise                                → undecided: run the same commit again.
  The first run is just the case n = 1, so a clear improvement is kept without re-runs.
  Each look uses the same k standard errors; stopping early on "not below the best"
  only ever refuses, so it saves runs without adding false keeps.

σ is the branch's measured noise (gitar/review/noise.py: pooled standard deviation of repeated
runs), never less than experiment.noise_floor, and the floor itself until anything has
been measured: two or three runs can by chance agree closely, and a margin built on
that accident would be no margin at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gitar import numbers
from gitar.config.schema import ExperimentConfig
from gitar.review.noise import Noise
from gitar.store.records import CRASH, DISCARD, KEEP, TIMEOUT, UNDECIDED, Notebook, best_of

STRICT, MARGIN, CONFIRM = "strict", "margin", "confirm"


@dataclass(frozen=True)
class Best:
    commit: str
    val_bpb: float  # mean of its successful runs on the branch
    runs: int


@dataclass(frozen=True)
class Verdict:
    status: str  # keep | discard | crash | timeout, or undecided (confirm: run the commit again)
    reason: str
    best_before: float | None
    delta: float | None  # this run's val_bpb − best_before
    rule: str
    margin: float | None = None  # the improvement a keep had to exceed (margin and confirm)


@dataclass(frozen=True)
class Policy:
    """The keep rule and its parameters, as ground.json's experiment section sets them."""

    rule: str
    margin_k: float = 2.0
    confirm_runs: int = 2
    noise_floor: float = 0.0

    @classmethod
    def of(cls, experiment: ExperimentConfig) -> Policy:
        return cls(rule=experiment.keep_rule, margin_k=experiment.margin_k,
                   confirm_runs=experiment.confirm_runs, noise_floor=experiment.noise_floor)

    @property
    def needs_noise(self) -> bool:
        return self.rule != STRICT

    @property
    def max_runs(self) -> int:
        """The most runs one candidate gets (confirm re-runs included)."""
        return 1 + self.confirm_runs if self.rule == CONFIRM else 1


@dataclass(frozen=True)
class Sigma:
    """The run-to-run standard deviation the judge assumes, and where it came from (for the reason)."""

    value: float
    source: str


def sigma_of(noise: Noise | None, floor: float) -> Sigma:
    """The measured noise, never below the floor; the floor until a commit has run twice."""
    if noise is None:
        return Sigma(floor, f"σ {floor:.6f} is experiment.noise_floor: no noise measured yet "
                            "(`gitar run --repeat 3` measures it)")
    where = f"{noise.n} runs" + (f" of {noise.commits} commits" if noise.commits > 1 else "")
    if noise.std < floor:
        return Sigma(floor, f"σ {floor:.6f} is experiment.noise_floor; measured {noise.std:.6f} over {where}")
    return Sigma(noise.std, f"σ {noise.std:.6f} measured over {where}")


def threshold(policy: Policy, sigma: float, n_candidate: int = 1, n_best: int = 1) -> float:
    """The improvement (best − mean) a candidate must exceed to be kept."""
    if policy.rule == MARGIN:
        return policy.margin_k * sigma
    if policy.rule == CONFIRM:
        return policy.margin_k * sigma * math.sqrt(1 / n_candidate + 1 / max(n_best, 1))
    return 0.0


def current_best(notebook: Notebook, branch: str, commit: str | None) -> Best | None:
    """The best of the branch if `commit` (its tip, or the attempt's parent) is a kept commit."""
    if commit is None:
        return None
    runs = best_of(notebook.records(commit), branch)
    if not runs:
        return None
    values = [r.val_bpb for r in runs if r.val_bpb is not None]
    return Best(commit=commit, val_bpb=math.fsum(values) / len(values), runs=len(values))


def decide(policy: Policy, runs: Sequence[float], best: Best, sigma: Sigma) -> Verdict:
    """Judge a candidate's successful runs (in order; the last is the newest) against the best.

    Pure: the benchmark (benchmarks/bench_judge.py) simulates the rules by calling this.
    """
    if not runs:
        raise ValueError("decide needs at least one run")
    n = len(runs)
    mean = math.fsum(runs) / n
    gain = best.val_bpb - mean
    delta = numbers.delta(runs[-1], best.val_bpb)  # as the result line, log and memory print it
    # The mean as readers will compute it: of the runs as recorded (6 decimals), not of the raw floats.
    recorded = math.fsum(map(numbers.rounded, runs)) / n
    shown = numbers.bpb(runs[0]) if n == 1 else f"mean {numbers.bpb(recorded)} of {n} runs"
    bar = f"best {numbers.bpb(best.val_bpb)}" + (f" (mean of {best.runs} runs)" if best.runs > 1 else "")

    def verdict(status: str, reason: str, margin: float | None = None) -> Verdict:
        return Verdict(status, f"{policy.rule}: {reason}", best.val_bpb, delta, policy.rule, margin)

    if policy.rule == STRICT:
        if gain > 0:
            return verdict(KEEP, f"{shown} < {bar}")
        return verdict(DISCARD, f"{shown} is not below {bar}")
    margin = threshold(policy, sigma.value, n, best.runs)
    if policy.rule == MARGIN:
        need = f"{policy.margin_k:g}×σ = {margin:.6f} ({sigma.source})"
        if gain > margin:
            return verdict(KEEP, f"{shown} beats {bar} by {gain:.6f} > {need}", margin)
        return verdict(DISCARD, f"{shown} improves on {bar} by {gain:+.6f}, not more than {need}", margin)
    if policy.rule == CONFIRM:
        need = f"{policy.margin_k:g}·σ·√(1/{n}+1/{best.runs}) = {margin:.6f} ({sigma.source})"
        if gain <= 0:
            return verdict(DISCARD, f"{shown} is not below {bar}", margin)
        if gain > margin:
            return verdict(KEEP, f"{shown} beats {bar} by {gain:.6f} > {need}", margin)
        if n >= policy.max_runs:
            return verdict(DISCARD, f"{shown} beats {bar} by only {gain:.6f}, not more than {need}", margin)
        return verdict(UNDECIDED, f"{shown} beats {bar} by {gain:.6f}, not more than {need}; "
                                  f"running it again ({n + 1} of up to {policy.max_runs} runs)", margin)
    raise ValueError(f"unknown keep rule {policy.rule!r}")  # ground.json validation admits only known rules


def judge(run_status: str, val_bpb: float | None, best: Best | None, policy: Policy, sigma: Sigma,
          error: str = "", *, remeasure: bool = False, earlier: Sequence[float] = ()) -> Verdict:
    """Judge one finished run. A crash or timeout is never kept and never becomes the best.

    `remeasure` is another run of the best itself: it stays the best, and the run joins
    the mean that later attempts are judged against. `earlier` are the successful runs
    of the same candidate that confirm has already made (empty for a first run).
    """
    before = best.val_bpb if best else None
    # A failed re-run ends confirm: the candidate is not kept on the runs it has so far.
    during = f"{policy.rule}: run {len(earlier) + 1} of the candidate failed, so it is not kept: " if earlier else ""
    if run_status == "timeout":
        return Verdict(TIMEOUT, f"{during}ran past the hard timeout; the process group was killed",
                       before, None, policy.rule)
    if run_status != "ok" or val_bpb is None:
        return Verdict(CRASH, during + (error or "the training process failed"), before, None, policy.rule)
    if remeasure and best is not None:
        runs = best.runs + 1
        mean = (best.val_bpb * best.runs + numbers.rounded(val_bpb)) / runs  # of the runs as recorded
        return Verdict(KEEP, f"re-measurement of the best: mean {numbers.bpb(mean)} over {runs} runs",
                       before, numbers.delta(val_bpb, best.val_bpb), policy.rule)
    if best is None:
        return Verdict(KEEP, "baseline: the first successful run on this branch", None, None, policy.rule)
    return decide(policy, [*earlier, val_bpb], best, sigma)
