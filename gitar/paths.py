"""Where gitar keeps its own files: under the git dir, outside the tracked tree.

No reset, checkout or `git clean` ever touches .git/gitar/, so logs, the running
state and the lock survive whatever the experiment loop does to the work tree.

Logs, snapshots and results are shared by all worktrees of a clone (run ids are
unique). The running state belongs to one worktree: each worktree runs its own
experiment. The lock belongs to a GPU: a worktree made by `gitar init --worktrees`
is pinned to one device (a `device` file in its own git dir) and takes that device's
lock; every unpinned worktree shares the one lock of the whole clone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gitar import shared


class GitDirs(Protocol):
    """What Paths needs of a repository (gitar/store/git.py's Git has it): paths sit below git."""

    @property
    def common_dir(self) -> Path: ...

    @property
    def gitdir(self) -> Path: ...

DEVICE_FILE = "device"


@dataclass(frozen=True)
class Paths:
    common_dir: Path  # the git dir shared by all worktrees of a clone
    gitdir: Path | None = None  # this worktree's own git dir (None or common_dir: the main worktree)
    device: str | None = None  # the GPU this worktree is pinned to (CUDA_VISIBLE_DEVICES), if any

    @classmethod
    def of(cls, git: GitDirs) -> Paths:
        return cls(git.common_dir, git.gitdir, read_device(git.gitdir))

    @property
    def base(self) -> Path:
        return self.common_dir / "gitar"

    @property
    def own(self) -> Path:
        """This worktree's own gitar directory."""
        return (self.gitdir or self.common_dir) / "gitar"

    @property
    def lock_name(self) -> str:
        return "lock" if self.device is None else f"lock-gpu{self.device}"

    def device_env(self) -> dict[str, str]:
        """What pins a process to this worktree's GPU."""
        # PCI bus order: the order /dev/nvidiaN follows, so the sandbox passes in the right node.
        return {} if self.device is None else {"CUDA_VISIBLE_DEVICES": self.device, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

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
    def runs(self) -> Path:
        """One directory per run: what the trainer wrote (out/), the evaluator's inputs and result."""
        return self.base / "runs"

    @property
    def ledger(self) -> Path:
        """What gitar itself wrote (gitar/store/ledger.py): shared by every worktree, like the notes."""
        return self.base / "ledger"

    @property
    def notes_cache(self) -> Path:
        """What the review commands derived from each note (gitar/store/notes_cache.py); only a cache."""
        return self.base / "cache" / "notes.marshal"

    @property
    def running(self) -> Path:
        return self.own / shared.RUNNING_FILE

    def log(self, commit: str, run_id: str) -> Path:
        return self.logs / f"{commit[:12]}-{run_id[:8]}.log"

    def runner_log(self, commit: str, run_id: str) -> Path:
        """What a detached runner process itself printed (its run's output goes to log())."""
        return self.logs / f"{commit[:12]}-{run_id[:8]}.runner.log"

    def crash(self, commit: str, run_id: str) -> Path:
        return self.logs / f"{commit[:12]}-{run_id[:8]}.crash.json"

    def result(self, run_id: str) -> Path:
        return self.results / f"{run_id}.json"


def read_device(gitdir: Path) -> str | None:
    try:
        text = (gitdir / "gitar" / DEVICE_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def write_device(gitdir: Path, device: str) -> None:
    (gitdir / "gitar").mkdir(parents=True, exist_ok=True)
    (gitdir / "gitar" / DEVICE_FILE).write_text(device + "\n")
