"""`gitar status`: the running experiment (if any), the branch's best, its noise and the keep rule."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar import runner, state
from gitar.commands.common import open_workspace
from gitar.history import one_line
from gitar.judge import Policy, current_best
from gitar.noise import Noise, branch_noise
from gitar.numbers import bpb, rounded
from gitar.paths import Paths
from gitar.records import UNDECIDED, Notebook, Record


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
                   "elapsed_s": round(time.time() - r.started, 1), "budget_s": r.budget_s, "log": r.log}
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
    paths = Paths.of(ws.git)
    running = state.load(paths)
    progress = runner.read_progress(Path(running.log)) if running else None
    notebook = Notebook(ws.git)
    # While an attempt runs, the branch sits on it unjudged: the best is the one it is judged against.
    tip = state.judged_tip(paths, ws.branch, ws.git.ref_target(f"refs/heads/{ws.branch}"))
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


def progress_line(running: state.Running, progress: runner.Progress | None) -> str:
    elapsed = time.time() - running.started
    line = f"running {running.commit[:7]} {elapsed:.0f}s"
    if progress is not None:
        line += f" | train {progress.train_s:.1f}/{progress.budget_s:g}s | step {progress.step} | loss {progress.loss:.4f}"
    else:
        line += f" | starting (budget {running.budget_s:g}s)"
    return line


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
