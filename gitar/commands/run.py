"""`gitar run [REV] [--repeat N]`: measure an existing commit without committing.

For the baseline (the first run of a fresh branch), for re-measuring the best, and
for CI runners that measure commits pushed by agents elsewhere. The branch never
moves here except to fast-forward onto a pushed commit that is kept.
"""

from __future__ import annotations

from pathlib import Path

from gitar import experiment, lock
from gitar.commands.common import open_workspace
from gitar.errors import GitarError
from gitar.records import Record


def run_commit(rev: str = "HEAD", repeat: int = 1, start: str | Path = ".") -> list[Record]:
    if repeat < 1:
        raise GitarError(f"--repeat must be at least 1, got {repeat}")
    ws = open_workspace(start)
    sha = ws.git.resolve(rev)
    tip = ws.git.ref_target(f"refs/heads/{ws.branch}")
    if sha != tip:
        raise GitarError(f"{rev} ({sha[:7]}) is not the tip of {ws.branch} ({(tip or '')[:7]}); "
                         "check out the branch whose commit you want to measure")
    records: list[Record] = []
    with lock.acquire(ws.git.common_dir, purpose="run", commit=sha):
        for _ in range(repeat):
            plan = experiment.plan_rerun(ws.git, sha, ws.branch)
            records.append(experiment.execute(ws.git, plan))
    return records
