"""Real workspaces for the integrity tests: the real prepare.py and train.py, prepared data, git and hooks.

`measured` is built once per session: a workspace on autoresearch/t1 (CPU preset, a 3-second
budget) whose baseline was trained by the real train.py and measured by gitar's harness
evaluation. Each test gets a private copy (its own cache too: the cache is a folder inside
the workspace), so it may cheat, tamper and break things freely.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.hermetic import hermetic_session
from testing.measured import Measured
from testing.prepared import build_workspace
from testing.workspace import Workspace


@pytest.fixture(scope="session")
def measured_template(tmp_path_factory: pytest.TempPathFactory, prepared_workspace: Path,
                      pre_commit_home: Path) -> Iterator[Measured]:
    base = tmp_path_factory.mktemp("integrity")
    with hermetic_session(base / "home"), pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRE_COMMIT_HOME", str(pre_commit_home))
        ws = build_workspace(prepared_workspace, base / "ws")
        mp.chdir(ws.root)
        proc = ws.gitar("init", "t1")
        assert proc.returncode == 0, proc.stderr
        proc = ws.gitar("run", "--json", timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        built = Measured(ws=ws, baseline=ws.head(), record=json.loads(proc.stdout))
    yield built


@pytest.fixture
def measured(measured_template: Measured, hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Measured:
    """A private copy of the measured workspace, cwd inside it."""
    root = tmp_path / "ws"
    shutil.copytree(measured_template.ws.root, root, symlinks=True)
    monkeypatch.delenv("GITAR_EXPORT_PATH", raising=False)
    monkeypatch.chdir(root)
    ws = Workspace(root)
    assert ws.head() == measured_template.baseline
    return Measured(ws=ws, baseline=measured_template.baseline, record=measured_template.record)
