"""`gitar wait`: block until the running experiment is recorded; same result line and exit code as `try`."""

from __future__ import annotations

import time
from pathlib import Path

from gitar.errors import GitarError
from gitar.host import state
from gitar.loop.recovery import recover
from gitar.loop.workspace import open_workspace
from gitar.paths import Paths
from gitar.store.records import Record

POLL_S = 0.5


def wait_for_result(start: str | Path = ".", timeout_s: float | None = None) -> Record:
    ws = open_workspace(start, need_experiment_branch=False)
    paths = ws.paths
    running = state.load(paths)
    if running is None:
        latest = _latest_result(paths)
        if latest is None:
            raise GitarError("no experiment is running and none has been recorded here yet")
        record = state.read_result(paths, latest)
        assert record is not None
        return record
    deadline = None if timeout_s is None else time.time() + timeout_s
    while True:
        current = state.load(paths)
        if current is None or current.run_id != running.run_id:
            break
        if not current.alive():
            recover(ws)  # the runner died: record it as aborted now rather than wait forever
            break
        if deadline is not None and time.time() > deadline:
            raise GitarError(f"still running after {timeout_s:g} s; `gitar wait` again later")
        time.sleep(POLL_S)
    record = state.read_result(paths, running.run_id)
    if record is None:
        for r in reversed(ws.notebook.records(running.commit)):
            if r.run_id == running.run_id:
                return r
        raise GitarError(f"the run of {running.commit[:7]} ended without a record; see its log {running.log}")
    return record


def _latest_result(paths: Paths) -> str | None:
    try:
        files = sorted(paths.results.glob("*.json"), key=lambda p: p.stat().st_mtime)
    except FileNotFoundError:
        return None
    return files[-1].stem if files else None
