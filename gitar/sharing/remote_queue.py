"""A remote queue: commit here, measure on a GPU runner, read the verdict back here.

`gitar try --remote ORIGIN "desc"` on a machine without a GPU commits and preflights as
usual, but runs nothing: the commit is pinned, and `gitar sync` pushes it with the records,
the branch base and the data pin. The runner's job (`gitar ci`, see .github/) measures the
pushed commits in order and syncs its records back. Waiting is polling: fetch the remote's
records (`sync(push=False)`) until the commit has a verdict, then put the local branch where
the verdict says — on the commit if kept, back at the best if not — with the same rules as a
local run (work-tree files follow only where they hold the attempt's content).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gitar.errors import ExitCode, GitarError
from gitar.sharing.sync import JUDGED, PUSHED, UP_TO_DATE, SyncResult, sync
from gitar.store.branch import MOVED_ELSEWHERE, PENDING, move_branch, moved_elsewhere
from gitar.store.git import Git
from gitar.store.records import KEEP, REJECTED, Notebook, Record
from gitar.store.refs import branch_ref

DEFAULT_POLL_S = 10.0  # a run takes minutes; a fetch every 10 s costs the remote little
FINAL = (*JUDGED, REJECTED)  # a runner that died leaves "aborted": its next job measures the commit again


@dataclass(frozen=True)
class Queued:
    """A commit pushed for the remote's runner, not measured yet."""

    commit: str
    description: str
    remote: str
    branch: str


def queue(git: Git, branch: str, sha: str, description: str, remote: str) -> Queued:
    """Pin the commit and push it with everything the runner needs; raise if the branch did not go."""
    Notebook(git).pin(sha, description)
    result = sync(git, remote)
    pushed = result.branch
    if pushed is None or pushed.action not in (PUSHED, UP_TO_DATE):
        why = pushed.reason if pushed is not None else "the branch was not pushed"
        raise GitarError(f"committed {sha[:7]} here, but {remote}/{branch} was not updated: {why}; the commit "
                         f"is safe here — resolve that, then `gitar sync {remote}` queues it", ExitCode.INTERNAL)
    return Queued(sha, description, remote, branch)


def verdict(git: Git, branch: str, sha: str) -> Record | None:
    """The commit's final record on the branch, if the runner has written one."""
    final = [r for r in Notebook(git).records(sha) if r.branch == branch and r.status in FINAL]
    return final[-1] if final else None


def wait_for_verdict(git: Git, branch: str, sha: str, remote: str, *, timeout_s: float | None = None,
                     poll_s: float = DEFAULT_POLL_S, sleep: Callable[[float], None] = time.sleep,
                     on_sync: Callable[[SyncResult], None] | None = None) -> Record:
    """Fetch the remote's records until the commit has a verdict; then move the local branch to match it."""
    if poll_s <= 0:
        raise GitarError(f"--poll must be positive, got {poll_s:g}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        result = sync(git, remote, push=False)
        if on_sync is not None:
            on_sync(result)
        record = verdict(git, branch, sha)
        if record is not None:
            return _follow(git, branch, sha, record)
        if deadline is not None and time.monotonic() >= deadline:
            raise GitarError(f"{sha[:7]} has no verdict from {remote}'s runner after {timeout_s:g} s; it stays "
                             f"queued — `gitar wait --remote {remote}` picks the result up later", ExitCode.NO_VERDICT_YET)
        sleep(poll_s)


def _follow(git: Git, branch: str, sha: str, record: Record) -> Record:
    """Put the local branch where the verdict puts it, as a local run would have."""
    if record.status == KEEP or record.kind != "attempt":
        return record
    tip = git.ref_target(branch_ref(branch))
    back_to = record.best_commit or record.parent
    if tip != sha or back_to is None:
        return record  # more commits were queued on top: the runner settles them, and their verdicts move it
    try:
        record.worktree = move_branch(git, branch, sha, back_to,
                                      f"gitar: {record.status} {sha[:7]} on the runner, back to best {back_to[:7]}")
    except GitarError as e:
        record.worktree = f"{PENDING}: {e.message}"  # recovery finishes the move at the next command
    if record.worktree == MOVED_ELSEWHERE:
        record.worktree = moved_elsewhere(branch, git.ref_target(branch_ref(branch)))
    return record
