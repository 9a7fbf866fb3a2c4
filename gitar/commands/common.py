"""What every command that touches the loop does first: find the repository, check its state, recover."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gitar.config import Ground
from gitar.errors import GitarError
from gitar.experiment import ground_at
from gitar.git import Git
from gitar.recovery import recover
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
        raise GitarError(f"not a gitar workspace: HEAD ({head[:7]}) has no ground.json; "
                         "clone the gitar template or run `gitar demo` to see one")
    ground = ground_at(git, head)
    branch = git.current_branch()
    prefix = ground.experiment.branch_prefix
    if need_experiment_branch:
        if branch is None:
            raise GitarError(f"HEAD is detached; check out an experiment branch ({prefix}TAG) "
                             "or create one with `gitar init TAG`")
        if not branch.startswith(prefix):
            raise GitarError(f"{branch} is not an experiment branch; create one with `gitar init TAG` "
                             f"(branches named {prefix}TAG)")
    for line in recover(git):
        print(f"gitar: {safe(line)}", file=sys.stderr)  # names a description: untrusted text
    head = git.resolve("HEAD")
    return Workspace(git=git, branch=branch or "", head=head, ground=ground)
