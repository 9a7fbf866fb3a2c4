"""The referee: decides keep or discard from a run's number and the branch's best.

The best of a branch is its tip (every discard resets the branch to it), and the
best's value is the mean of the successful runs recorded for that commit on that
branch, so re-measuring the best (`gitar run --repeat N`) refines the bar instead of
leaving a lucky minimum in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitar.records import CRASH, DISCARD, KEEP, TIMEOUT, Notebook, best_of


@dataclass(frozen=True)
class Best:
    commit: str
    val_bpb: float  # mean of its successful runs on the branch
    runs: int


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    best_before: float | None
    delta: float | None
    rule: str


def current_best(notebook: Notebook, branch: str, commit: str | None) -> Best | None:
    """The best of the branch if `commit` (its tip, or the attempt's parent) is a kept commit."""
    if commit is None:
        return None
    runs = best_of(notebook.records(commit), branch)
    if not runs:
        return None
    values = [r.val_bpb for r in runs if r.val_bpb is not None]
    return Best(commit=commit, val_bpb=sum(values) / len(values), runs=len(values))


def judge(run_status: str, val_bpb: float | None, best: Best | None, rule: str, error: str = "",
          *, remeasure: bool = False) -> Verdict:
    """Apply the keep rule. A crash or timeout is never kept and never becomes the best.

    `remeasure` is another run of the best itself: it stays the best, and the run joins
    the mean that later attempts are judged against.
    """
    before = best.val_bpb if best else None
    if run_status == "timeout":
        return Verdict(TIMEOUT, "ran past the hard timeout; the process group was killed", before, None, rule)
    if run_status != "ok" or val_bpb is None:
        return Verdict(CRASH, error or "the training process failed", before, None, rule)
    if remeasure and best is not None:
        runs = best.runs + 1
        mean = (best.val_bpb * best.runs + val_bpb) / runs
        return Verdict(KEEP, f"re-measurement of the best: mean {mean:.6f} over {runs} runs",
                       before, val_bpb - best.val_bpb, rule)
    if best is None:
        return Verdict(KEEP, "baseline: the first successful run on this branch", None, None, rule)
    delta = val_bpb - best.val_bpb
    if rule == "strict":
        if delta < 0:
            return Verdict(KEEP, f"strict: {val_bpb:.6f} < best {best.val_bpb:.6f}", before, delta, rule)
        return Verdict(DISCARD, f"strict: {val_bpb:.6f} is not below best {best.val_bpb:.6f}", before, delta, rule)
    raise ValueError(f"unknown keep rule {rule!r}")  # ground.json validation admits only known rules
