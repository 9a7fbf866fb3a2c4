"""Where gitar keeps its own files: under the git dir, outside the tracked tree.

No reset, checkout or `git clean` ever touches .git/gitar/, so logs, the running
state and the lock survive whatever the experiment loop does to the work tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    common_dir: Path  # the git dir shared by all worktrees of a clone

    @property
    def base(self) -> Path:
        return self.common_dir / "gitar"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def snapshots(self) -> Path:
        return self.base / "snapshots"

    @property
    def results(self) -> Path:
        return self.base / "results"

    @property
    def running(self) -> Path:
        return self.base / "running.json"

    def log(self, commit: str, run_id: str) -> Path:
        return self.logs / f"{commit[:12]}-{run_id[:8]}.log"

    def crash(self, commit: str, run_id: str) -> Path:
        return self.logs / f"{commit[:12]}-{run_id[:8]}.crash.json"

    def result(self, run_id: str) -> Path:
        return self.results / f"{run_id}.json"
