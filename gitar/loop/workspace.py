"""The workspace a command or a hook works in, opened once: the repository, HEAD's ground, the branch.

Whether HEAD is on an experiment branch gitar may run is decided once, here (standing):
the commands refuse anything else (open_workspace), the hooks pass in silence where a
commit is no experiment and refuse only a branch that should be one (open_for_hook).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gitar import shared
from gitar.config.schema import GROUND_FILE, Ground, ground_at
from gitar.errors import GitarError
from gitar.loop.opened import Opened
from gitar.loop.recovery import recover
from gitar.store import pins
from gitar.store.git import Git
from gitar.text import safe

# Where HEAD stands, in the order it is checked.
UNBORN = "unborn"  # no commit yet
NO_GROUND = "no ground"  # HEAD has no ground.json: not a gitar workspace, or one half set up
DETACHED = "detached"
OTHER_BRANCH = "other branch"  # a branch outside the experiment prefix: a person's, not the loop's
NOT_GITARS = "not gitar's"  # an experiment branch without gitar's hook files at HEAD
EXPERIMENT = "experiment"

# The branches gitar makes by default: one of these without gitar's files is a workspace half set
# up (files deleted, or copied in by hand and never committed), never a branch to pass in silence.
DEFAULT_BRANCH_PREFIX = "autoresearch/"
SHOWN_BRANCHES = 3  # experiment branches a refusal names before "and N more"


@dataclass(frozen=True)
class Standing:
    """What HEAD is, as gitar sees it: the one experiment-branch check."""

    git: Git
    state: str  # UNBORN | NO_GROUND | DETACHED | OTHER_BRANCH | NOT_GITARS | EXPERIMENT
    branch: str | None = None
    head: str | None = None
    ground: Ground | None = None  # read for a branch; None where HEAD is unborn, lacks it, or is detached
    missing: str | None = None  # the first hook file HEAD lacks (NOT_GITARS)


def standing(git: Git) -> Standing:
    if git.head_is_unborn():
        return Standing(git, UNBORN)
    head = git.resolve("HEAD")
    branch = git.current_branch()
    if git.blob_at(head, GROUND_FILE) is None:
        return Standing(git, NO_GROUND, branch, head)
    if branch is None:
        # Its ground is read only by a caller that wants it: a hook passes a detached HEAD unread.
        return Standing(git, DETACHED, None, head)
    ground = ground_at(git, head)
    if not ground.experiment.is_experiment_branch(branch):
        return Standing(git, OTHER_BRANCH, branch, head, ground)
    missing = next((f for f in shared.HOOK_FILES if git.blob_at(head, f) is None), None)
    if missing is not None:
        return Standing(git, NOT_GITARS, branch, head, ground, missing)
    return Standing(git, EXPERIMENT, branch, head, ground)


@dataclass(frozen=True)
class Workspace(Opened):
    """What a command or a hook works in: the Opened repository, and where HEAD stands."""

    branch: str  # "" where HEAD is detached (a command that needs no experiment branch)
    head: str
    ground: Ground  # the committed ground.json of HEAD: the policy in force


def open_workspace(start: str | Path = ".", *, need_experiment_branch: bool = True) -> Workspace:
    """The commands' workspace: anything but a gitar workspace (on an experiment branch) is refused; recovers."""
    git = Git.discover(start)
    at = standing(git)
    if at.state == UNBORN:
        raise GitarError("this repository has no commits yet; commit the workspace files, then `gitar init TAG`")
    assert at.head is not None
    head = at.head
    if at.state == NO_GROUND:
        if all(git.blob_at(head, f) is not None for f in ("train.py", "prepare.py")):
            # An autoresearch clone, or an experiment branch made before gitar's files were committed.
            raise GitarError(f"not a gitar workspace: HEAD ({head[:7]}) has no ground.json; run `gitar init TAG` "
                             "on the branch you started from: it adds and commits gitar's files, then makes the branch")
        raise GitarError(f"not a gitar workspace: HEAD ({head[:7]}) has no ground.json; "
                         "clone the gitar template or run `gitar demo` to see one")
    ground = at.ground or ground_at(git, head)
    prefix = ground.experiment.branch_prefix
    if need_experiment_branch:
        if at.state == DETACHED:
            raise GitarError(f"HEAD is detached; {_where_to_go(git, prefix)}")
        if at.state == OTHER_BRANCH:
            raise GitarError(f"{at.branch} is not an experiment branch; {_where_to_go(git, prefix)}")
        if at.state == NOT_GITARS:
            raise GitarError(f"{at.branch} has no {at.missing} at HEAD ({head[:7]}), so its hooks are not gitar's: "
                             "run `gitar init TAG` on the branch you started from and experiment on the branch it "
                             "makes")
    opened = Opened.of(git)
    _recover(opened)
    return _at(opened, at.branch or "", git.resolve("HEAD"), ground)


def open_for_hook(git: Git, *, recovering: bool = False) -> Workspace | None:
    """The hooks' workspace: None where a commit is no experiment (the hook passes in silence).

    Refuses a branch that should be an experiment's but lacks gitar's files. recovering: finish
    what an interrupted gitar left behind first (the pre-commit stage does).
    """
    at = standing(git)
    if at.state == NO_GROUND and at.branch is not None:
        assert at.head is not None
        if at.branch.startswith(DEFAULT_BRANCH_PREFIX) or pins.base_commit(git, at.branch) is not None:
            raise GitarError(f"{at.branch} has no {GROUND_FILE} at HEAD ({at.head[:7]}), so gitar cannot check or "
                             "run this experiment: commit gitar's workspace files (ground.json, model.json, "
                             ".pre-commit-config.yaml, hooks/gitar-hook) on this branch, or commit with "
                             "`git commit --no-verify` to leave gitar out")
    if at.state == NOT_GITARS:
        assert at.head is not None
        raise GitarError(f"{at.branch} has no {at.missing} at HEAD ({at.head[:7]}), so its hooks are not gitar's: "
                         "run `gitar init TAG` on the branch you started from (it adds and commits gitar's files) "
                         "and experiment on the branch it makes")
    if at.state != EXPERIMENT:
        return None
    assert at.branch is not None and at.head is not None and at.ground is not None
    opened = Opened.of(git)
    if recovering:
        _recover(opened)
    return _at(opened, at.branch, at.head, at.ground)


def _at(opened: Opened, branch: str, head: str, ground: Ground) -> Workspace:
    return Workspace(opened.git, opened.paths, opened.notebook, branch=branch, head=head, ground=ground)


def _recover(opened: Opened) -> None:
    for line in recover(opened):
        print(f"gitar: {safe(line)}", file=sys.stderr)  # names a description: untrusted text


def _where_to_go(git: Git, prefix: str) -> str:
    """The experiment branches there are to switch to, by name, or how to make the first one."""
    names = sorted(b for b in git.local_branches() if b.startswith(prefix))
    if not names:
        return f"create one with `gitar init TAG` (branches named {prefix}TAG)"
    shown = ", ".join(names[:SHOWN_BRANCHES])
    more = f" and {len(names) - SHOWN_BRANCHES} more" if len(names) > SHOWN_BRANCHES else ""
    return (f"switch to an experiment branch: {shown}{more} (`git switch {names[0]}`), "
            "or create one with `gitar init TAG`")
