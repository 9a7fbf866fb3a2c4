"""The running experiment, as a small JSON file beside the lock.

Written when a run starts and removed when its record is written. If gitar dies
in between (SIGKILL, power loss), the file is what the next gitar command uses to
kill what is left of the training process and record the attempt as aborted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gitar import runner
from gitar.paths import Paths


@dataclass(frozen=True)
class Running:
    run_id: str
    commit: str
    branch: str
    description: str
    kind: str  # attempt | baseline | rerun
    best_commit: str | None  # where the branch goes back to if the attempt is not kept
    move_branch: bool  # False for `gitar run` of an existing commit: the branch never moves
    started: float
    budget_s: float
    timeout_s: float
    log: str
    pid: int  # the gitar process that runs the experiment
    pgid: int | None = None  # the training process group, once started
    seed: int | None = None

    def save(self, paths: Paths) -> None:
        paths.base.mkdir(parents=True, exist_ok=True)
        tmp = paths.running.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, paths.running)

    def with_(self, **changes: Any) -> Running:
        return replace(self, **changes)


def load(paths: Paths) -> Running | None:
    try:
        data = json.loads(paths.running.read_text())
        return Running(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # A torn write cannot happen (os.replace), so this is damage: treat as nothing running.
        return None


def clear(paths: Paths, run_id: str) -> None:
    current = load(paths)
    if current is not None and current.run_id == run_id:
        paths.running.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process still runs. A zombie does not: in a container nobody may ever reap it."""
    stat = runner.process_stat(pid)
    if stat is not None:
        return stat.state not in ("Z", "X")
    if Path("/proc/self/stat").exists():
        return False  # Linux, and no /proc entry: gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
