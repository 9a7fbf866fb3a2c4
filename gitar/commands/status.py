"""`gitar status`: the running experiment (if any), the branch's best, its noise and the keep rule.

`gitar status --all`: every worktree of the clone and the experiment each runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar.config.schema import ground_at
from gitar.errors import GitarError
from gitar.host import runner, state
from gitar.loop.judge import Policy, current_best
from gitar.loop.workspace import open_workspace
from gitar.numbers import bpb, number_or_none, rounded
from gitar.paths import Paths
from gitar.review.history import one_line
from gitar.review.noise import Noise, branch_noise
from gitar.store.git import Git
from gitar.store.records import UNDECIDED, Record
from gitar.store.refs import branch_ref


@dataclass(frozen=True)
class Status:
    branch: str
    running: state.Running | None
    progress: runner.Progress | None
    best_commit: str | None
    best_val_bpb: float | None
    best_runs: int
    policy: Policy
    noise: Noise | None
    confirming: list[float]  # the running candidate's undecided runs so far (confirm re-runs)

    def as_dict(self) -> dict[str, Any]:
        run = None
        if self.running is not None:
            r = self.running
            run = {"run_id": r.run_id, "commit": r.commit, "description": r.description, "kind": r.kind,
                   "elapsed_s": round(time.time() - r.started, 1), "budget_s": r.budget_s, "log": r.log,
                   **phase_of(r, self.progress).as_dict()}
            if self.progress is not None:
                p = self.progress
                run.update(step=p.step, loss=p.loss, train_s=p.train_s)
            if self.confirming:
                run.update(confirm_run=len(self.confirming) + 1, confirm_of=self.policy.max_runs,
                           earlier_val_bpb=self.confirming)
        return {"branch": self.branch, "running": run, "best": None if self.best_commit is None else
                {"commit": self.best_commit, "val_bpb": _rounded(self.best_val_bpb), "runs": self.best_runs},
                "keep_rule": self.policy.rule, "noise": self.noise.as_dict() if self.noise else None}


def get_status(start: str | Path = ".") -> Status:
    ws = open_workspace(start)
    paths = ws.paths
    running = state.load(paths)
    progress = runner.read_progress(Path(running.log)) if running else None
    notebook = ws.notebook
    # While an attempt runs, the branch sits on it unjudged: the best is the one it is judged against.
    tip = state.judged_tip(paths, ws.branch, ws.git.ref_target(branch_ref(ws.branch)))
    best = current_best(notebook, ws.branch, tip)
    confirming = _undecided(notebook.records(running.commit), running.branch) if running else []
    return Status(branch=ws.branch, running=running, progress=progress,
                  best_commit=best.commit if best else None, best_val_bpb=best.val_bpb if best else None,
                  best_runs=best.runs if best else 0, policy=Policy.of(ws.ground.experiment),
                  noise=branch_noise(notebook, ws.branch), confirming=confirming)


def _rounded(value: float | None) -> float | None:
    return None if value is None else rounded(value)


def _undecided(records: list[Record], branch: str) -> list[float]:
    """val_bpb of the undecided runs since the commit's last decision: the confirm sequence under way."""
    values: list[float] = []
    for r in records:
        if r.branch != branch:
            continue
        if r.status == UNDECIDED and r.val_bpb is not None:
            values.append(r.val_bpb)
        elif r.kind == "attempt":
            values = []
    return values


@dataclass(frozen=True)
class Phase:
    """Where a run stands. `phase` is gitar's own (state.PHASES), written by the process running it;
    `stage` refines the training phase for display from train.py's step lines (its claims, never
    used for a decision): start-up/compile until timed training starts, training, then export."""

    phase: str | None  # None: a running state from an older gitar
    stage: str
    detail: str
    time_left_s: float | None  # before gitar stops this phase's process (its hard timeout)
    timeout_s: float | None  # that process's whole limit

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "stage": self.stage,
                "time_left_s": None if self.time_left_s is None else round(self.time_left_s, 1),
                "phase_timeout_s": None if self.timeout_s is None else round(self.timeout_s, 1)}




def phase_of(running: state.Running, progress: runner.Progress | None, now: float | None = None) -> Phase:
    now = time.time() if now is None else now
    phase = running.phase if running.phase in state.PHASES else None
    deadline, since = number_or_none(running.deadline), number_or_none(running.phase_started)
    left = None if deadline is None else max(deadline - now, 0.0)
    limit = None if deadline is None or since is None else deadline - since
    budget = number_or_none(running.budget_s)
    step = "" if progress is None else f"step {progress.step} | loss {progress.loss:.4f}"
    if phase == state.STARTING:
        return Phase(phase, "start-up", f"snapshot and sandbox (budget {budget or 0:g}s)", left, limit)
    if phase in (state.TRAINING, None):
        if progress is None:
            return Phase(phase, "start-up/compile", f"no step yet (budget {budget or 0:g}s)", left, limit)
        train = f"train {progress.train_s:.1f}/{progress.budget_s:g}s"
        if progress.train_s <= 0:  # the first steps are untimed: compilation and warm-up
            return Phase(phase, "start-up/compile", f"{train} | warm-up {step}", left, limit)
        if progress.train_s < progress.budget_s:
            return Phase(phase, "training", f"{train} | {step}", left, limit)
        # Its budget spent, train.py exports its model (or, evaluate "reported", measures it itself).
        stage = state.EXPORT if running.evaluate != "reported" else "evaluation by train.py"
        return Phase(phase, stage, f"training ended at step {progress.step} ({train})", left, limit)
    after = "" if progress is None else f"after step {progress.step}"
    words = {state.EXPORT: "gitar copies and hashes the export", state.EVALUATION: "gitar's harness",
             state.JUDGING: "judging and recording"}
    return Phase(phase, phase, " | ".join(w for w in (words[phase], after) if w), left, limit)


def time_left_words(p: Phase) -> str:
    if p.time_left_s is None:
        return ""
    of = f" of {p.timeout_s:.0f}s" if p.timeout_s is not None else ""
    return f"{p.time_left_s:.0f}s left{of}"


def progress_line(running: state.Running, progress: runner.Progress | None, now: float | None = None) -> str:
    """e.g. `running 1a2b3c4 38s | training | train 4.5/20s | step 7 | loss 3.2500 | 82s left of 121s`."""
    now = time.time() if now is None else now
    p = phase_of(running, progress, now)
    elapsed = now - (number_or_none(running.started) or now)
    parts = [f"running {running.commit[:7]} {elapsed:.0f}s", p.stage, p.detail, time_left_words(p)]
    return " | ".join(x for x in parts if x)


def status_lines(s: Status) -> list[str]:
    lines = [f"branch {s.branch}"]
    if s.running is not None:
        # one_line: a running.json is a file train.py could have written; its description may be anything.
        lines.append(f"{progress_line(s.running, s.progress)} \"{one_line(s.running.description, 60)}\"")
        if s.confirming:
            so_far = ", ".join(map(bpb, s.confirming))
            lines.append(f"confirm: run {len(s.confirming) + 1} of up to {s.policy.max_runs} of "
                         f"{s.running.commit[:7]} (so far val_bpb {so_far})")
        lines.append(f"log {s.running.log}")
    else:
        lines.append("nothing running")
    if s.best_commit is not None and s.best_val_bpb is not None:
        runs = f" (mean of {s.best_runs} runs)" if s.best_runs > 1 else ""
        lines.append(f"best {s.best_commit[:7]} val_bpb {bpb(s.best_val_bpb)}{runs}{_noise_words(s.noise)}")
    else:
        lines.append("best none yet: run the baseline with `gitar run`")
    lines.append(_rule_words(s.policy))
    return lines


def _noise_words(noise: Noise | None) -> str:
    if noise is None:
        return "; noise not measured (`gitar run --repeat 3`)"
    return f"; noise σ {noise.std:.6f} (MAD {noise.mad:.6f}) over {noise.n} runs"


def _rule_words(p: Policy) -> str:
    if p.rule == "strict":
        return "keep rule strict: any val_bpb below the best is kept"
    if p.rule == "margin":
        return f"keep rule margin: kept when it beats the best by more than {p.margin_k:g}×σ (σ ≥ {p.noise_floor:g})"
    return (f"keep rule confirm: {p.margin_k:g} standard errors, up to {p.confirm_runs} re-runs "
            f"of a close candidate (σ ≥ {p.noise_floor:g})")


# ---------------------------------------------------------------------------
# `gitar status --all`: every worktree of the clone, one row each
# ---------------------------------------------------------------------------

IDLE = "idle"


@dataclass(frozen=True)
class TreeStatus:
    """One worktree: what it has checked out, its GPU, and the experiment it runs (if any)."""

    path: Path
    branch: str | None
    head: str | None
    gpu: str  # "GPU K" (pinned by `gitar init --worktrees`), or what ground.json leaves it: unpinned, cpu, mps
    running: state.Running | None
    progress: runner.Progress | None
    stale: bool  # the running state names a gitar process that is gone (its worktree's next command records it)
    missing: bool  # the worktree's directory is gone

    @property
    def phase(self) -> Phase | None:
        return None if self.running is None else phase_of(self.running, self.progress)

    @property
    def state_word(self) -> str:
        if self.missing:
            return "missing"
        if self.running is None:
            return IDLE
        if self.stale:
            return "stale"
        p = self.phase
        return p.stage if p is not None else "running"

    def as_dict(self) -> dict[str, Any]:
        run = None
        if self.running is not None:
            r, p = self.running, self.phase
            run = {"run_id": r.run_id, "commit": r.commit, "description": r.description, "kind": r.kind,
                   "elapsed_s": round(time.time() - (number_or_none(r.started) or time.time()), 1),
                   **(p.as_dict() if p is not None else {})}
            if self.progress is not None:
                run.update(step=self.progress.step, train_s=self.progress.train_s)
        return {"worktree": str(self.path), "branch": self.branch, "head": self.head, "gpu": self.gpu,
                "state": self.state_word, "running": run}


def all_status(start: str | Path = ".") -> list[TreeStatus]:
    """Every worktree's running experiment, read from its own running state; nothing is changed in
    the others (a stale one is recovered by the next gitar command run there)."""
    ws = open_workspace(start, need_experiment_branch=False)
    out: list[TreeStatus] = []
    for w in ws.git.worktrees():
        gpu = _gpu(ws.git, None, w.head)
        if w.prunable or not w.path.is_dir():
            out.append(TreeStatus(w.path, w.branch, w.head, gpu, None, None, stale=False, missing=True))
            continue
        try:
            paths = Paths.of(Git.discover(w.path))
        except GitarError:
            out.append(TreeStatus(w.path, w.branch, w.head, gpu, None, None, stale=False, missing=True))
            continue
        running = state.load(paths)
        progress = runner.read_progress(Path(running.log)) if running is not None and isinstance(running.log, str) \
            else None
        stale = running is not None and not (isinstance(running.pid, int) and running.alive())
        out.append(TreeStatus(w.path, w.branch, w.head, _gpu(ws.git, paths.device, w.head), running, progress,
                              stale=stale, missing=False))
    return out


def _gpu(git: Git, device: str | None, head: str | None) -> str:
    if device is not None:
        return f"GPU {device}"
    try:
        wanted = ground_at(git, head).processor.device if head is not None else None
    except GitarError:  # a worktree on a commit without (or with a broken) ground.json
        wanted = None
    return wanted if wanted in ("cpu", "mps") else "unpinned"


def all_status_lines(trees: list[TreeStatus]) -> list[str]:
    rows = [("worktree", "branch", "commit", "phase", "left", "gpu", "description")]
    for t in trees:
        r, p = t.running, t.phase
        commit = (r.commit if r is not None else t.head or "")[:7] or "-"
        left = f"{p.time_left_s:.0f}s" if p is not None and p.time_left_s is not None and not t.stale else "-"
        desc = f"\"{one_line(r.description, 60)}\"" if r is not None else "-"
        if t.stale:
            desc += " (its gitar is gone; any gitar command there records it)"
        rows.append((str(t.path), t.branch or "(detached)", commit, t.state_word, left, t.gpu, desc))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            for row in rows]
