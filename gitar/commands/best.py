"""`gitar best`: the branch's best commit and its numbers, as the judge sees it.

The best is the branch tip when it was kept (the judge's rule), its value the mean of
its successful runs there; re-measurements (`gitar run --repeat N`) add runs and a spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar.host import state
from gitar.loop.workspace import open_workspace
from gitar.numbers import bpb, delta, rounded, signed
from gitar.review import history
from gitar.review.history import Attempt, History
from gitar.review.noise import Noise, Spread, pooled_spread
from gitar.store.refs import HEADS_PREFIX, branch_ref, tracked_branch, tracking_branch_ref


@dataclass(frozen=True)
class BestReport:
    branch: str
    best: Attempt | None
    baseline: Attempt | None  # the first kept attempt on the branch's lineage
    attempts: int
    kept: int
    noise: Noise | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"branch": self.branch, "best": None, "baseline": None,
                               "attempts": self.attempts, "kept": self.kept,
                               "noise": self.noise.as_dict() if self.noise else None}
        if self.noise is not None:
            out["noise"]["commits"] = self.noise.commits
        if self.best is not None:
            b = self.best
            spread = _spread(b)
            out["best"] = {**b.as_dict(), "values": b.values, "spread": spread.as_dict() if spread else None}
        if self.baseline is not None and self.baseline.val_bpb is not None:
            out["baseline"] = {"commit": self.baseline.commit, "val_bpb": rounded(self.baseline.val_bpb)}
        return out


def find_best(start: str | Path = ".") -> BestReport:
    ws = open_workspace(start)
    return best_report(history.load(ws.git, ws.branch))


@dataclass(frozen=True)
class BranchBest:
    branch: str
    best: Attempt | None  # the branch tip, when it was kept there
    attempts: int
    kept: int


@dataclass(frozen=True)
class GlobalBest:
    """Every experiment branch's best, and the best of them: what many agents reached together."""

    branches: list[BranchBest]

    @property
    def best(self) -> BranchBest | None:
        top: BranchBest | None = None
        top_value = 0.0
        for b in self.branches:  # sorted by name: a tie goes to the first
            value = b.best.val_bpb if b.best is not None else None
            if value is not None and (top is None or value < top_value):
                top, top_value = b, value
        return top

    def as_dict(self) -> dict[str, Any]:
        top = self.best
        return {"best": {**top.best.as_dict(), "branch": top.branch} if top and top.best else None,
                "branches": [{"branch": b.branch, "best": b.best.as_dict() if b.best else None,
                              "attempts": b.attempts, "kept": b.kept} for b in self.branches]}


def find_global_best(start: str | Path = ".") -> GlobalBest:
    """The best of every experiment branch (local, or only on a remote this clone syncs with)."""
    ws = open_workspace(start, need_experiment_branch=False)
    prefix = ws.ground.experiment.branch_prefix
    paths = ws.paths
    tips: dict[str, str | None] = {}
    listing = ws.git.out("for-each-ref", "--format=%(objectname) %(refname)", branch_ref(prefix),
                         tracking_branch_ref("*", prefix))
    for line in listing.splitlines():
        sha, _, ref = line.partition(" ")
        local = ref.startswith(HEADS_PREFIX)
        name = ref.removeprefix(HEADS_PREFIX) if local else tracked_branch(ref)
        if local or name not in tips:
            # this worktree's branch, while an attempt runs on it: the best that attempt faces
            tips[name] = state.judged_tip(paths, name, sha) if local else sha
    by_branch: dict[str, list[Attempt]] = {}
    for a in history.load(ws.git, None).unordered:
        by_branch.setdefault(a.branch, []).append(a)
    branches = []
    for name in sorted(tips):
        mine = by_branch.get(name, [])
        tip = next((a for a in mine if a.commit == tips[name]), None)
        best = tip if tip is not None and tip.status == "keep" and tip.values else None
        branches.append(BranchBest(name, best, len(mine), sum(a.status == "keep" for a in mine)))
    return GlobalBest(branches)


def global_best_lines(g: GlobalBest) -> list[str]:
    top = g.best
    if top is None or top.best is None or top.best.val_bpb is None:
        return [f"no best yet on any of {len(g.branches)} experiment branches: `gitar run` measures a baseline"]
    b, best_value = top.best, top.best.val_bpb
    lines = [f"best of {len(g.branches)} branches: {b.commit[:7]} val_bpb {bpb(best_value)} on {top.branch} "
             f"\"{history.one_line(b.description, 72)}\""]
    width = max(len(x.branch) for x in g.branches)
    for x in g.branches:
        value = f"{x.best.commit[:7]} {bpb(x.best.val_bpb)}" if x.best and x.best.val_bpb is not None else "- (no best yet)"
        mark = "  <- best" if x is top else ""
        lines.append(f"  {x.branch:<{width}}  {value}  ({x.attempts} attempts, {x.kept} kept){mark}")
    return lines


def best_report(h: History) -> BestReport:
    counts = h.counts
    return BestReport(branch=h.branch or "", best=h.best, baseline=h.lineage[0] if h.lineage else None,
                      attempts=len(h.unordered), kept=counts["keep"], noise=h.noise)


def _spread(a: Attempt) -> Spread | None:
    return pooled_spread([a.values])


def noise_phrase(noise: Noise) -> str:
    commits = "1 commit" if noise.commits == 1 else f"{noise.commits} commits"
    return f"std {noise.std:.6f} (robust: {noise.mad:.6f}) from {noise.n} runs of {commits} run more than once"


def best_lines(r: BestReport) -> list[str]:
    b = r.best
    if b is None or b.val_bpb is None:
        return [f"no best yet on {r.branch}: `gitar run` measures the baseline"]
    lines = [f"best {b.commit[:7]} val_bpb {bpb(b.val_bpb)} on {r.branch} \"{history.one_line(b.description, 72)}\""]
    values = b.values
    spread = _spread(b)
    if spread is not None:
        lines.append(f"mean of {len(values)} runs: min {bpb(min(values))}, max {bpb(max(values))}, "
                     f"std {spread.std:.6f}")
    else:
        lines.append("1 run; `gitar run --repeat 3` re-measures it and narrows the bar")
    lines.append(f"noise on this branch: {noise_phrase(r.noise)}" if r.noise else
                 "noise on this branch: not measured (no commit was run twice)")
    if r.baseline is not None and r.baseline.val_bpb is not None:
        lines.append(f"baseline {r.baseline.commit[:7]} {bpb(r.baseline.val_bpb)} -> {bpb(b.val_bpb)} "
                     f"({signed(delta(b.val_bpb, r.baseline.val_bpb))}) over {r.attempts} attempts, {r.kept} kept")
    extras = []
    if b.memory_gb is not None:
        extras.append(f"memory {b.memory_gb:.1f} GB")
    if b.training_seconds is not None:
        extras.append(f"training {b.training_seconds:.1f} s")
    if extras:
        lines.append(", ".join(extras))
    if b.hypothesis:
        lines.append(f"hypothesis: {history.one_line(b.hypothesis, 200)}")
    lines += [f"lesson: {history.one_line(x.lesson, 200)}" for x in b.lessons]
    return lines
