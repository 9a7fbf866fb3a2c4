"""Fixtures shared by every test folder: they wrap the helpers of testing/ (the repository root).

hermetic: a hermetic git environment (testing/hermetic.py). workspace: a real gitar workspace
with the fake trainer (testing/workspace.py), initialised on autoresearch/t1. small_corpus_dir and
prepared_workspace: a CPU-preset workspace prepared once per session by the real prepare.py
(testing/prepared.py), for tests/harness, tests/integrity and tests/attacks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitar.demo.corpus import write_corpus
from testing.hermetic import apply_hermetic
from testing.prepared import SMALL_CORPUS_DOCS, make_prepared_workspace, run_prepare
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


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SMALL_CORPUS_DOCS documents of the embedded stdlib corpus, as parquet files."""
    directory = tmp_path_factory.mktemp("small-corpus")
    write_corpus(directory, max_docs=SMALL_CORPUS_DOCS)
    return directory


@pytest.fixture(scope="session")
def prepared_workspace(tmp_path_factory: pytest.TempPathFactory, small_corpus_dir: Path) -> Path:
    """A CPU-preset workspace, prepared once per session by the real `prepare.py --source`."""
    root = tmp_path_factory.mktemp("prepared")
    ws = make_prepared_workspace(root, root / "cache")
    result = run_prepare(ws, "--source", str(small_corpus_dir))
    if result.returncode != 0:
        pytest.fail(f"prepare.py --source failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return ws



# Fixtures whose setup trains the real train.py on CPU: `measured` (tests/integrity) and `arena`
# (tests/attacks) start from a baseline gitar ran and measured. A test there that uses one is slow,
# so `-m "not slow"` runs without any real training. (By folder: tests/core has a `measured` of its
# own, on the fake trainer.)
_REAL_TRAINING = {Path(__file__).parent / "integrity": "measured", Path(__file__).parent / "attacks": "arena"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be there when it does
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixture = _REAL_TRAINING.get(item.path.parent)
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
