"""Every kind of record says which gitar wrote it, on which host, and which harness the commit had.

A record is built in one place (gitar/loop/run_record.py) whatever ended the run: a full run, a
refusal after the commit, a run that could not start, a run whose gitar died (recorded by the
next command), a change the smoke step refused. Each must carry the same identifying fields,
or a record of one kind could not be compared with, or traced to the code of, another.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitar import version
from gitar.errors import GitarError
from gitar.host import state
from gitar.loop import experiment, integrity, recovery
from gitar.loop.opened import Opened
from gitar.paths import Paths
from gitar.store.git import Git
from gitar.store.records import Notebook
from testing.workspace import Workspace

BRANCH = "autoresearch/t1"
# numbers.iso_time: ISO 8601 in UTC, to the millisecond, the one spelling of a record's times
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_every_kind_of_record_carries_gitar_host_and_harness(workspace: Workspace,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0  # a full run (the baseline)
    ws.write_train(0.5, mode="smoke-fail")
    assert ws.gitar("try", "shape bug").returncode == 2  # refused by the smoke step, noted
    ws.git("checkout", "--", "train.py")

    git = Git.discover(ws.root)
    tip = ws.tip()
    # Refused after the commit (what after_commit records when another experiment holds the lock).
    plan = experiment.plan_rerun(Opened.of(git), tip, BRANCH)
    experiment.finish(Opened.of(git), plan, experiment.rejected(git, plan, "another experiment is running"))

    # Committed, but it could not be run: recorded as a crash with the reason.
    def cannot_run(*_: object, **__: object) -> None:
        raise GitarError("the log's volume is full")

    monkeypatch.setattr(experiment, "_train", cannot_run)
    assert experiment.execute(Opened.of(git), experiment.plan_rerun(Opened.of(git), tip, BRANCH)).status == "crash"

    # A run whose gitar died: the next command records it as aborted.
    paths = Paths.of(git)
    state.Running(run_id=experiment.new_run_id(), commit=tip, branch=BRANCH, description="died",
                  kind="rerun", best_commit=tip, move_branch=False, started=time.time(), budget_s=1.0,
                  timeout_s=30.0, log=str(paths.logs / "died.log"), pid=_dead_pid(), seed=44).save(paths)
    assert any("recorded as aborted" in line for line in recovery.recover(Opened.of(git)))

    records = ws.all_records()
    kinds = {(r["status"], r["kind"]) for r in records}
    assert kinds >= {("keep", "baseline"), ("rejected", "smoke"), ("rejected", "rerun"), ("crash", "rerun"),
                     ("aborted", "rerun")}, kinds
    for r in records:
        what = f"{r['status']} {r['kind']}"
        assert r.get("gitar") == version.identity(), what
        assert r.get("host") == socket.gethostname(), what
        assert r.get("harness_sha256") == integrity.harness_sha256(git, str(r["commit"])), what
        assert ISO_TIME.fullmatch(str(r.get("started"))), (what, r.get("started"))


def test_an_aborted_record_of_a_commit_gone_from_the_repository_is_still_written(
        workspace: Workspace) -> None:
    """Recovery never fails on a running-state file naming a commit git does not have: no harness hash then."""
    ws = workspace
    git = Git.discover(ws.root)
    paths = Paths.of(git)
    gone = "0123456789abcdef" * 2 + "01234567"
    state.Running(run_id=experiment.new_run_id(), commit=gone, branch=BRANCH, description="gone",
                  kind="attempt", best_commit=None, move_branch=True, started=time.time(), budget_s=1.0,
                  timeout_s=30.0, log=str(paths.logs / "gone.log"), pid=_dead_pid()).save(paths)
    assert any("recorded as aborted" in line for line in recovery.recover(Opened.of(git)))
    [record] = Notebook(git).records(gone)
    assert record.status == "aborted" and record.harness_sha256 is None
    assert record.gitar == version.identity() and record.host == socket.gethostname()
    assert Path(paths.result(record.run_id)).is_file()
