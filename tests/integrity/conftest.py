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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.hermetic import _GIT_VARS, REPO_ROOT
from testing.workspace import Workspace
from tests.harness.conftest import prepared_workspace as prepared_workspace  # the session fixture
from tests.harness.conftest import small_corpus_dir as small_corpus_dir

BUDGET_S = 3  # counted training seconds per real run: the model learns a little, the test stays short
BRANCH = "autoresearch/t1"


@contextmanager
def hermetic_session(home: Path) -> Iterator[None]:
    """What tests/conftest.py's `hermetic` gives a test, for a session-scoped fixture."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    with pytest.MonkeyPatch.context() as mp:
        for var in (*_GIT_VARS, "GITAR_EXPORT_PATH"):
            mp.delenv(var, raising=False)
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        for who in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{who}_NAME", "Test Researcher")
            mp.setenv(f"GIT_{who}_EMAIL", "researcher@example.com")
        yield


def build_workspace(prepared: Path, root: Path) -> Workspace:
    """A gitar workspace from the prepared one: its prepare.py, train.py and model.json, a private
    copy of its cache, ground.json with the cache inside the workspace and a short budget."""
    root.mkdir(parents=True)
    ground = json.loads((prepared / "ground.json").read_text())
    shutil.copytree(Path(ground["data"]["cache_dir"]), root / "cache")
    ground["data"]["cache_dir"] = "cache"
    ground["training"]["time_budget_s"]["cpu"] = BUDGET_S
    # Ten excluded warm-up steps take a minute on two loaded cores: the allowance is not under test here.
    ground["training"]["allowance_s"]["cpu"] = 600
    ground["experiment"].update(timeout_s=240, smoke=False)
    (root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    for name in ("prepare.py", "train.py", "model.json"):
        shutil.copy(prepared / name, root / name)
    shutil.copy(REPO_ROOT / ".pre-commit-config.yaml", root / ".pre-commit-config.yaml")
    shutil.copytree(REPO_ROOT / "hooks", root / "hooks")
    (root / "program.md").write_text("# program\n")
    (root / ".gitignore").write_text("cache/\n")
    ws = Workspace(root)
    ws.git("init", "-q", "-b", "main")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "workspace")
    return ws


@dataclass(frozen=True)
class Measured:
    ws: Workspace
    baseline: str  # the commit the baseline measured
    record: dict[str, object]  # its record


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


def edit_train(ws: Workspace, *replacements: tuple[str, str]) -> None:
    """train.py with each (old, new) replaced once; fails if an old text is not there."""
    source = (ws.root / "train.py").read_text()
    for old, new in replacements:
        assert source.count(old) == 1, f"train.py no longer contains {old!r}"
        source = source.replace(old, new)
    (ws.root / "train.py").write_text(source)


def try_json(ws: Workspace, description: str, timeout: float = 300) -> dict[str, object]:
    proc = ws.gitar("try", description, "--json", timeout=timeout)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    record: dict[str, object] = json.loads(proc.stdout)
    return record
