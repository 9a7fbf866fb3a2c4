"""The repository as every gitar process opens it once: git, gitar's paths, the notebook, the lock.

An experiment runs in one of these (experiment.py); a command's Workspace (workspace.py) is one
that also knows HEAD's branch and ground. What is made here is shared by everything the process
does after opening, so no module under it opens Paths or a Notebook from git again.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitar.host import lock
from gitar.paths import Paths
from gitar.review import summary
from gitar.store.git import Git
from gitar.store.records import NotebookWriter


@dataclass(frozen=True)
class Opened:
    git: Git
    paths: Paths
    notebook: NotebookWriter  # every write of it refreshes the summaries in git's own tools

    @classmethod
    def of(cls, git: Git) -> Opened:
        return cls(git, Paths.of(git), summary.writer(git))

    def lock(self, *, purpose: str, token: str | None = None, commit: str | None = None,
             description: str | None = None) -> lock.Lock:
        """Take, or join (same token), the lock experiments here take: the clone's, or its GPU's
        in a pinned worktree; GitarError REFUSED while another experiment holds it."""
        return lock.acquire(self.paths.common_dir, purpose=purpose, token=token, commit=commit,
                            description=description, name=self.paths.lock_name)
