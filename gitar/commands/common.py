"""What every command that touches the loop does first: find the repository, check its state, recover."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gitar import shared
from gitar.config.schema import Ground, ground_at
from gitar.errors import GitarError
from gitar.loop.recovery import recover
from gitar.store.git import Git
from gitar.text import safe


@dataclass(frozen=True)
class Workspace:
    git: Git
    branch: str
    head: str
    ground: Ground  # the committed ground.json of HEAD: the policy in force


def open_workspace(start: str | Path = ".", *, need_experiment_branch: bool = True) -> Workspace:
    git = Git.discover(start)
    if git.head_is_unborn():
        raise GitarError("this repository has no commits yet; commit the workspace files, then `gitar init TAG`")
    head = git.resolve("HEAD")
    if git.blob_at(head, "ground.json") is None:
        if all(git.blob_at(head, f) is not None for f in ("train.py", "prepare.py")):
            # An autoresearch clone, or an experiment branch made before gitar's files were committed.
            raise GitarError(f"not a gitar workspace: HEAD ({head[:7]}) has no ground.json; run `gitar init TAG` "
                             "on the branch you started from: it adds and commits gitar's files, then makes the branch")
        raise GitarError(f"not a gitar workspace: HEAD ({head[:7]}) has no ground.json; "
                         "clone the gitar template or run `gitar demo` to see one")
    ground = ground_at(git, head)
    branch = git.current_branch()
    prefix = ground.experiment.branch_prefix
    if need_experiment_branch:
        if branch is None:
            raise GitarError(f"HEAD is detached; {_where_to_go(git, prefix)}")
        if not ground.experiment.is_experiment_branch(branch):
            raise GitarError(f"{branch} is not an experiment branch; {_where_to_go(git, prefix)}")
        missing = [f for f in shared.HOOK_FILES if git.blob_at(head, f) is None]
        if missing:
            raise GitarError(f"{branch} has no {missing[0]} at HEAD ({head[:7]}), so its hooks are not gitar's: run "
                             "`gitar init TAG` on the branch you started from and experiment on the branch it makes")
    for line in recover(git):
        print(f"gitar: {safe(line)}", file=sys.stderr)  # names a description: untrusted text
    head = git.resolve("HEAD")
    return Workspace(git=git, branch=branch or "", head=head, ground=ground)


SHOWN_BRANCHES = 3  # experiment branches a refusal names before "and N more"


def _where_to_go(git: Git, prefix: str) -> str:
    """The experiment branches there are to switch to, by name, or how to make the first one."""
    names = sorted(b for b in git.repo.branches.local if b.startswith(prefix))
    if not names:
        return f"create one with `gitar init TAG` (branches named {prefix}TAG)"
    shown = ", ".join(names[:SHOWN_BRANCHES])
    more = f" and {len(names) - SHOWN_BRANCHES} more" if len(names) > SHOWN_BRANCHES else ""
    return (f"switch to an experiment branch: {shown}{more} (`git switch {names[0]}`), "
            "or create one with `gitar init TAG`")
