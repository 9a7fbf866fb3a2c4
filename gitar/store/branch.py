"""Moving an experiment branch back to its best without losing anyone's edits.

`git reset --hard` would do the job in the common case and destroy work in the
others: a run can take minutes, and during that time a person or a detached agent
may edit files. So the branch moves with compare-and-swap, the index follows the
branch, and each file in the work tree follows only if it still holds exactly the
attempted commit's content. Edited files stay as they are (their diff against the
best then shows in `git diff`), and untracked or ignored files are never touched.
"""

from __future__ import annotations

import contextlib
import os

from gitar.errors import GitarError
from gitar.store import ledger
from gitar.store.git import Git
from gitar.store.refs import branch_ref

FOLLOWED = "followed"  # the work tree now matches the best
KEPT_EDITS = "kept-edits"  # some files kept edits made after the commit
NOT_CHECKED_OUT = "not-checked-out"  # the branch is not checked out here: only the ref moved
MOVED_ELSEWHERE = "moved-elsewhere"  # someone moved the branch meanwhile: left alone
PENDING = "pending"  # the move could not happen now; the next gitar command completes it


def move_branch(git: Git, branch: str, attempt: str, target: str, message: str) -> str:
    ref = branch_ref(branch)
    if git.ref_target(ref) != attempt:
        return MOVED_ELSEWHERE
    checked_out = git.current_branch() == branch
    if checked_out and (git.gitdir / "index.lock").exists():
        # Moving the ref but not the index would leave HEAD and the index disagreeing.
        raise GitarError("git's index is locked by another process (.git/index.lock), so the branch "
                         "stays on the attempt for now; the next gitar command moves it back")
    edited = _edited_paths(git, attempt) if checked_out else set()
    try:
        git.update_ref(ref, target, attempt, message)
    except GitarError:
        if git.ref_target(ref) != attempt:
            return MOVED_ELSEWHERE  # the compare-and-swap lost: someone moved it since the check above
        raise
    ledger.branch_set(git, branch, target)
    if not checked_out:
        return NOT_CHECKED_OUT

    changed = _changed_between(git, attempt, target)
    follow = [p for p in changed if p not in edited]
    # The index becomes the best's tree; stat info is refreshed below so git status stays fast.
    git.run("read-tree", target)
    in_target = set(git.out("ls-tree", "-r", "-z", "--name-only", target).split("\0")) - {""}
    restore = [p for p in follow if p in in_target]
    remove = [p for p in follow if p not in in_target]
    if restore:
        git.run("checkout-index", "-f", "-z", "--stdin", input="\0".join(restore) + "\0")
    for path in remove:
        # Identical to the attempt's copy, which stays reachable under refs/gitar/attempts/.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(git.root / path)
    git.run("update-index", "-q", "--refresh", check=False)
    return KEPT_EDITS if any(p in edited for p in changed) else FOLLOWED


def moved_elsewhere(branch: str, tip: str | None) -> str:
    """A record's worktree field when gitar found the branch moved by someone else (see gitar/loop/result_line.py)."""
    where = f"is at {tip[:7]}" if tip else "was deleted"
    return f"{MOVED_ELSEWHERE}: {branch} {where}, which gitar did not put there"


def _edited_paths(git: Git, attempt: str) -> set[str]:
    """Tracked files whose work-tree or index content differs from the attempt, plus untracked
    files that sit where the best has a file (the best's copy must not overwrite them)."""
    out = git.out("diff", "--name-only", "-z", "--no-renames", attempt)
    edited = set(out.split("\0")) - {""}
    staged = git.out("diff", "--cached", "--name-only", "-z", "--no-renames", attempt)
    edited |= set(staged.split("\0")) - {""}
    untracked = git.run("ls-files", "-z", "--others", "--exclude-standard").stdout
    ignored = git.run("ls-files", "-z", "--others", "--ignored", "--exclude-standard").stdout
    edited |= (set(untracked.split("\0")) | set(ignored.split("\0"))) - {""}
    return edited


def _changed_between(git: Git, a: str, b: str) -> list[str]:
    proc = git.run("diff-tree", "-r", "-z", "--name-only", "--no-renames", a, b)
    return [p for p in proc.stdout.split("\0") if p]

