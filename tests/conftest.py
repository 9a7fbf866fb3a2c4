"""Fixtures shared by every test folder: they wrap the helpers of testing/ (the repository root).

hermetic: a hermetic git environment (testing/hermetic.py). workspace: a real gitar workspace
with the fake trainer (testing/workspace.py), initialised on autoresearch/t1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testing.hermetic import apply_hermetic
from testing.workspace import Workspace, make_workspace


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # pre-commit keeps a small store; one per session keeps hook installs fast.
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pre_commit_home: Path) -> Path:
    home = tmp_path / "home"
    apply_hermetic(monkeypatch, home, pre_commit_home)
    assert os.environ["HOME"] == str(home)
    return home


@pytest.fixture
def workspace(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An initialised workspace on autoresearch/t1 with the hooks installed, cwd inside it."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    proc = ws.gitar("init", "t1")
    assert proc.returncode == 0, proc.stderr
    return ws
