"""Finishing what an interrupted gitar left behind, at the start of the next command.

Two situations, both detected from git and the running-state file alone:
- a run whose gitar process died (SIGKILL, a closed terminal, a reboot): kill what is
  left of its training process group, record the attempt as aborted unless its record
  was already written, and move the branch back to the best;
- a branch whose tip carries a record that is not a keep (the record was written but
  the branch move did not happen): move it back to the best the record names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gitar.host import lock, state
from gitar.host.limits import RunGroup
from gitar.host.processes import kill_group, process_stat
from gitar.loop import run_record, trust
from gitar.loop.judge import current_best
from gitar.loop.opened import Opened
from gitar.store.branch import move_branch
from gitar.store.git import Git
from gitar.store.ledger import Ledger
from gitar.store.records import ABORTED, KEEP
from gitar.store.refs import branch_ref


def recover(ws: Opened) -> list[str]:
    """Repair the repository after an interruption; returns one line per repair made."""
    notes: list[str] = []
    git, paths = ws.git, ws.paths
    running = state.load(paths)
    if running is not None and not running.alive():
        notes.append(_abort_dead_run(ws, running))
    if lock.clear_stale(paths.common_dir, paths.lock_name):
        notes.append("cleared a stale experiment lock left by a process that no longer runs")
    branch = git.current_branch()
    if branch is not None:
        line = _finish_reset(git, branch)
        if line:
            notes.append(line)
    return notes


def _stop_leftovers(running: state.Running) -> None:
    """Kill what is left of the dead runner's trainer or evaluator — only what provably is it.

    The running-state file is gitar's (the sandbox cannot reach it), yet a pid or a process
    group alone is no proof: pids are reused, and a hand-made file could name anything.
    What counts: the run's own control group (named after its run id), and a process whose
    pid, start time and command line or environment (the run id) all match what gitar recorded.
    """
    for name in (running.run_id, running.run_id + "-eval"):
        group = RunGroup.find(name)
        if group is not None:
            group.kill()
            group.remove()
    pid = running.trainer_pid
    if pid is not None and running.trainer_start is not None and _started_for(pid, running):
        kill_group(pid, grace_s=5.0)


def _started_for(pid: int, running: state.Running) -> bool:
    stat = process_stat(pid)
    if stat is None or stat.start_time != running.trainer_start or stat.pgrp != pid:
        return False
    marker = running.run_id.encode()
    for part in ("cmdline", "environ"):
        try:
            if marker in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


def _back_to(ws: Opened, running: state.Running) -> str | None:
    """Where the branch may go back to: the best the run was judged against if the notebook
    says it is a kept commit of the branch, else the attempt's parent; never a commit the
    running-state file alone names."""
    notebook = ws.notebook
    if not notebook.is_pinned(running.commit):
        return None  # gitar pins every attempt before it runs: this one never ran under gitar
    best = running.best_commit
    if best is not None and current_best(notebook, running.branch, best) is not None:
        return best
    parents = ws.git.commit(running.commit).parent_ids
    return str(parents[0]) if parents else None


def _abort_dead_run(ws: Opened, running: state.Running) -> str:
    git, paths, notebook = ws.git, ws.paths, ws.notebook
    _stop_leftovers(running)
    record = next((r for r in notebook.records(running.commit) if r.run_id == running.run_id), None)
    if record is None:
        record = run_record.build(
            git, ABORTED, commit=running.commit, branch=running.branch, description=running.description,
            run_id=running.run_id, kind=running.kind, started=running.started, seed=running.seed,
            reason="gitar stopped during the run (killed or machine restarted); recorded by the next command",
            best_commit=running.best_commit, log=running.log)
        notebook.append(record)
    state.save_result(paths, record, unless_written=True)  # `gitar wait` then reports this attempt
    target = _back_to(ws, running) if running.move_branch else None
    if target is not None:
        move_branch(git, running.branch, running.commit, target,
                    f"gitar: aborted {running.commit[:7]}, back to best {target[:7]}")
    state.clear(paths, running.run_id)
    shutil.rmtree(paths.snapshots / running.run_id, ignore_errors=True)
    shutil.rmtree(paths.runs / running.run_id, ignore_errors=True)
    return f"recovered an interrupted run of {running.commit[:7]} ({running.description[:50]!r}): recorded as aborted"


def _finish_reset(git: Git, branch: str) -> str | None:
    tip = git.ref_target(branch_ref(branch))
    if tip is None:
        return None
    lines = [ln for ln in trust.note_lines(git, tip) if ln.record.branch == branch]
    mine = [ln.record for ln in lines]
    if not mine or any(r.status == KEEP for r in mine) or mine[-1].kind != "attempt":
        return None
    if lines[-1].sha256.encode() not in Ledger.of(git).raw():
        # A record gitar did not write must not move the branch (to where a forged best_commit
        # points); left as it is, the check before judging refuses and says why.
        return None
    target = mine[-1].best_commit or mine[-1].parent
    if target is None:
        return None
    move_branch(git, branch, tip, target, f"gitar: finish reset of {tip[:7]} ({mine[-1].status})")
    return f"moved {branch} back from {tip[:7]} ({mine[-1].status}) to the best {target[:7]}"

