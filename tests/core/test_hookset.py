"""`gitar try` runs the hook stages itself only when the hooks are gitar's alone.

With any other hook a commit would run — a user's hook in .pre-commit-config.yaml, an
executable script in .git/hooks, a legacy hook pre-commit kept, core.hooksPath — the
commit goes through the hooks, so those run too. Either way the same checks apply to
exactly what is committed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gitar.loop.own_hooks import foreign_hooks
from gitar.store.git import Git
from testing.trainers import fake_train
from testing.workspace import Workspace, make_workspace


def test_only_gitars_hooks_by_default(workspace: Workspace) -> None:
    assert foreign_hooks(Git.discover(workspace.root)) is None


@pytest.mark.parametrize("change", ["hooks_path", "commit_msg", "legacy", "replaced", "config_entry"])
def test_any_other_hook_is_noticed(workspace: Workspace, change: str) -> None:
    hooks = workspace.root / ".git" / "hooks"
    if change == "hooks_path":
        workspace.git("config", "core.hooksPath", str(hooks))
    elif change == "commit_msg":
        script = hooks / "commit-msg"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    elif change == "legacy":
        (hooks / "pre-commit.legacy").write_text("#!/bin/sh\nexit 0\n")
    elif change == "replaced":
        (hooks / "post-commit").write_text("#!/bin/sh\nexit 0\n")
    else:
        config = workspace.root / ".pre-commit-config.yaml"
        config.write_text(config.read_text().replace("entry: hooks/gitar-hook run", "entry: hooks/other run"))
    assert foreign_hooks(Git.discover(workspace.root)) is not None


def test_a_harmless_file_in_the_hooks_dir_is_not_a_hook(workspace: Workspace) -> None:
    (workspace.root / ".git" / "hooks" / "README").write_text("not executable\n")
    assert foreign_hooks(Git.discover(workspace.root)) is None


def test_a_users_own_hook_still_runs_under_gitar_try(hermetic: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    ws.add_user_hook()
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert foreign_hooks(Git.discover(ws.root)) is not None
    assert ws.gitar("run").returncode == 0
    ws.write_train(0.5)
    proc = ws.gitar("try", "better, through the hooks")
    assert proc.returncode == 0, proc.stderr
    assert (ws.root / ".git" / "user-hook-ran").read_text() == "ran\n"
    [rec] = ws.records(ws.tip())
    assert rec["status"] == "keep" and rec["description"] == "better, through the hooks"


@pytest.mark.parametrize("user_hook", [False, True], ids=["in-process", "through-hooks"])
def test_the_preflight_sees_only_what_is_committed(hermetic: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, user_hook: bool) -> None:
    """A module staged beside train.py but not committed with it is missing in the smoke step too."""
    ws = make_workspace(tmp_path / "ws")
    if user_hook:
        ws.add_user_hook()
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    before = ws.tip()
    (ws.root / "helper.py").write_text("X = 1\n")
    ws.git("add", "helper.py")  # staged, but neither agent- nor user-owned: gitar try leaves it out
    (ws.root / "train.py").write_text("import helper\n" + fake_train(0.5))
    proc = ws.gitar("try", "imports a module the commit lacks")
    assert proc.returncode == 2, proc.stderr
    assert "smoke step failed" in proc.stderr and "helper" in proc.stderr
    assert ws.tip() == before
    assert (ws.root / "train.py").read_text().startswith("import helper\n")  # the edit is untouched
    assert "helper.py" in ws.git("diff", "--cached", "--name-only").stdout  # still staged as the user left it


def test_index_lock_refuses_before_anything(workspace: Workspace) -> None:
    assert workspace.gitar("run").returncode == 0
    before = workspace.tip()
    workspace.write_train(0.5)
    lock = workspace.root / ".git" / "index.lock"
    lock.write_text("")
    try:
        proc = workspace.gitar("try", "while another git runs")
    finally:
        os.unlink(lock)
    assert proc.returncode == 2 and "index.lock" in proc.stderr, proc.stderr
    assert workspace.tip() == before and len(workspace.all_records()) == 1
    assert "Traceback" not in proc.stderr
