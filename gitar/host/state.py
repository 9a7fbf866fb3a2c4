"""The running experiment, as a small JSON file beside the lock; and the result file it ends with.

Written when a run starts and removed when its record is written. If gitar dies
in between (SIGKILL, power loss), the file is what the next gitar command uses to
kill what is left of the training process and record the attempt as aborted.
The result file (one per run id) holds the record the run ended with, for `gitar try` and
`gitar wait` in other processes; its one writer is save_result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from gitar.files import write_atomic, write_json_atomic
from gitar.host.processes import process_alive
from gitar.paths import Paths
from gitar.store.records import Record

# What gitar is doing for a run, as it knows it itself (never from what train.py prints): each
# change is written here by the process running the experiment, the only writer, so `gitar
# status` in another process and the live line of `gitar try` can show it.
STARTING = "start-up"  # writing the snapshot, setting up the sandbox: the trainer is not started yet
TRAINING = "training"  # the trainer runs: its start-up, compilation, training and export are all in here
EXPORT = "export"  # the trainer has exited; gitar copies and hashes its export and the evaluation data
EVALUATION = "evaluation"  # gitar's harness evaluator measures the export
JUDGING = "judging"  # the number is in: judging, recording, keeping or moving the branch back
PHASES = (STARTING, TRAINING, EXPORT, EVALUATION, JUDGING)


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
    # The process gitar started for the run (bwrap), identified beyond its pid: recovery kills
    # only a process whose start time matches, or what is in the run's namespace or cgroup.
    trainer_pid: int | None = None
    trainer_start: int | None = None
    pid_namespace: int | None = None
    sandbox: str | None = None
    phase: str | None = None  # one of PHASES (None: written by an older gitar)
    phase_started: float | None = None  # when this phase began (epoch seconds)
    # When gitar stops the process of this phase (epoch seconds): the trainer's hard timeout, then
    # the evaluator's (what is left of experiment.timeout_s). None while no timed process runs.
    deadline: float | None = None
    evaluate: str | None = None  # ground.json experiment.evaluate of the run: "harness" or "reported"
    # The start time of `pid` (processes.start_time): after a restart another process may hold
    # that pid, and the run it names must still be found dead and recovered. None: an older gitar.
    pid_start: int | None = None

    def save(self, paths: Paths) -> None:
        write_json_atomic(paths.running, asdict(self))

    def with_(self, **changes: Any) -> Running:
        return replace(self, **changes)

    def alive(self) -> bool:
        """Whether the gitar process that runs this experiment still runs (a zombie does not, nor a
        process that merely reuses its pid)."""
        return process_alive(self.pid, self.pid_start)


def load(paths: Paths) -> Running | None:
    try:
        data = json.loads(paths.running.read_text())
        return Running(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, RecursionError):
        # A torn write cannot happen (os.replace), so this is damage: treat as nothing running.
        return None


def judged_tip(paths: Paths, branch: str, tip: str | None) -> str | None:
    """The commit that is the branch's best for review (status, best, memory): its tip, except
    while an attempt runs there. `git commit` puts the branch on the attempt before it is
    judged, so until its record is written the best is the one the attempt is judged against,
    which the running state names (None: no best yet). A rerun never moves the branch.
    """
    running = load(paths)
    if (tip is not None and running is not None and running.move_branch and running.branch == branch
            and running.commit == tip):
        return running.best_commit
    return tip


def clear(paths: Paths, run_id: str) -> None:
    current = load(paths)
    if current is not None and current.run_id == run_id:
        paths.running.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# The result file
# ---------------------------------------------------------------------------


def save_result(paths: Paths, record: Record, *, unless_written: bool = False) -> None:
    """The record a run ended with, where `gitar try` and `gitar wait` look for it. Recovery writes
    the aborted record of a dead runner only `unless_written`: a result the runner left stands."""
    target = paths.result(record.run_id)
    if unless_written and target.exists():
        return
    write_atomic(target, record.to_line() + "\n")


def read_result(paths: Paths, run_id: str) -> Record | None:
    """The record a run left in its result file, None while there is none."""
    try:
        data = json.loads(paths.result(run_id).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Record.from_dict(data)
