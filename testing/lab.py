"""Many clones, one history: a bare repository as the shared remote, clones as agents and runners.

An agent here has no GPU: it commits train.py changes without hooks and pushes them. A runner
is a plain clone that runs the CI job script the workflow runs. Everything is real git.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pygit2

from testing.hermetic import REPO_ROOT
from testing.workspace import Workspace, make_workspace

BRANCH = "autoresearch/t1"
JOB_SCRIPT = REPO_ROOT / ".github" / "gitar-job.sh"


@dataclass
class Lab:
    remote: Path  # the bare repository everyone pushes to
    root: Path

    def clone(self, name: str) -> Workspace:
        dest = self.root / name
        proc = subprocess.run(["git", "clone", "-q", str(self.remote), str(dest)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return Workspace(dest)

    def agent(self, name: str = "agent") -> Workspace:
        ws = self.clone(name)
        ws.git("switch", "-q", "-c", BRANCH)
        ws.git("push", "-q", "origin", BRANCH)
        return ws

    def remote_notes(self) -> dict[str, list[dict[str, object]]]:
        """{commit: records} as the remote holds them."""
        repo = pygit2.Repository(str(self.remote))
        out: dict[str, list[dict[str, object]]] = {}
        try:
            notes = list(repo.notes("refs/notes/gitar"))  # type: ignore[call-arg]
        except (KeyError, pygit2.GitError):
            return out
        for note in notes:
            blob = repo.get(note.id)
            assert isinstance(blob, pygit2.Blob)
            out[str(note.annotated_id)] = [json.loads(ln) for ln in blob.data.decode().splitlines() if ln.strip()]
        return out

    def remote_ref(self, ref: str) -> str | None:
        repo = pygit2.Repository(str(self.remote))
        try:
            return str(repo.references[ref].target)
        except KeyError:
            return None


def commit_train(ws: Workspace, val_bpb: float, message: str, mode: str = "ok", sleep_s: float = 0.0) -> str:
    """An agent's commit of a train.py change, made without hooks (no GPU here), not yet run."""
    ws.write_train(val_bpb, mode, sleep_s)
    ws.git("add", "train.py")
    ws.git("-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", message)
    return ws.head()


def job(runner: Workspace, step: str, branch: str = BRANCH, timeout: float = 120,
        script: Path = JOB_SCRIPT) -> subprocess.CompletedProcess[str]:
    """One step of the CI job, exactly as the workflow runs it (script: where the trusted checkout keeps it)."""
    env = dict(os.environ, GITAR_BRANCH=branch, GITAR_PYTHON=sys.executable)
    env.pop("GITAR_GIT_TOKEN", None)
    return subprocess.run(["bash", str(script), step], cwd=runner.root, capture_output=True, text=True,
                          env=env, timeout=timeout)


def run_job(runner: Workspace, branch: str = BRANCH) -> str:
    """The whole job (fetch, measure, push); returns the measure step's output."""
    out = ""
    for step in ("fetch", "measure", "push"):
        proc = job(runner, step, branch)
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
        out += proc.stdout if step == "measure" else ""
    return out


def make_lab(root: Path) -> Lab:
    """A bare remote seeded with a workspace on main (the fake trainer at val_bpb 1.0)."""
    seed = make_workspace(root / "seed")
    remote = root / "remote.git"
    proc = subprocess.run(["git", "clone", "-q", "--bare", str(seed.root), str(remote)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return Lab(remote=remote, root=root)
