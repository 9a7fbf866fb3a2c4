"""`gitar status`: the running experiment (if any) and the branch's best."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar import runner, state
from gitar.commands.common import open_workspace
from gitar.judge import current_best
from gitar.paths import Paths
from gitar.records import Notebook


@dataclass(frozen=True)
class Status:
    branch: str
    running: state.Running | None
    progress: runner.Progress | None
    best_commit: str | None
    best_val_bpb: float | None
    best_runs: int

    def as_dict(self) -> dict[str, Any]:
        run = None
        if self.running is not None:
            r = self.running
            run = {"run_id": r.run_id, "commit": r.commit, "description": r.description, "kind": r.kind,
                   "elapsed_s": round(time.time() - r.started, 1), "budget_s": r.budget_s, "log": r.log}
            if self.progress is not None:
                p = self.progress
                run.update(step=p.step, loss=p.loss, train_s=p.train_s)
        return {"branch": self.branch, "running": run, "best": None if self.best_commit is None else
                {"commit": self.best_commit, "val_bpb": self.best_val_bpb, "runs": self.best_runs}}


def get_status(start: str | Path = ".") -> Status:
    ws = open_workspace(start)
    paths = Paths(ws.git.common_dir)
    running = state.load(paths)
    progress = runner.read_progress(Path(running.log)) if running else None
    best = current_best(Notebook(ws.git), ws.branch, ws.git.ref_target(f"refs/heads/{ws.branch}"))
    return Status(branch=ws.branch, running=running, progress=progress,
                  best_commit=best.commit if best else None, best_val_bpb=best.val_bpb if best else None,
                  best_runs=best.runs if best else 0)


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
        lines.append(f"{progress_line(s.running, s.progress)} \"{s.running.description.splitlines()[0][:60]}\"")
        lines.append(f"log {s.running.log}")
    else:
        lines.append("nothing running")
    if s.best_commit is not None and s.best_val_bpb is not None:
        runs = f" (mean of {s.best_runs} runs)" if s.best_runs > 1 else ""
        lines.append(f"best {s.best_commit[:7]} val_bpb {s.best_val_bpb:.6f}{runs}")
    else:
        lines.append("best none yet: run the baseline with `gitar run`")
    return lines
