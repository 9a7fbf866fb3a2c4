"""`gitar demo`: the README's first command, end to end on the CPU with the real trainer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gitar.commands.demo import build_workspace, default_directory
from gitar.config import load_ground, load_model


def test_default_directory_never_reuses_a_taken_one(tmp_path: Path) -> None:
    assert default_directory(tmp_path) == tmp_path / "gitar-demo"
    (tmp_path / "gitar-demo").mkdir()
    assert default_directory(tmp_path) == tmp_path / "gitar-demo"  # empty: fine to use
    (tmp_path / "gitar-demo" / "f").write_text("x")
    assert default_directory(tmp_path) == tmp_path / "gitar-demo-2"


def test_workspace_is_the_project_files_with_the_cpu_preset(tmp_path: Path) -> None:
    build_workspace(tmp_path)
    ground = load_ground(tmp_path / "ground.json")
    assert ground.training.mode == "cpu" and ground.cache_dir == (tmp_path / "data").resolve()
    load_model(tmp_path / "model.json", ground)
    assert (tmp_path / "hooks" / "gitar-hook").stat().st_mode & 0o111
    assert ground.experiment.sandbox == "bwrap"


def test_without_a_sandbox_the_demo_says_off_in_its_ground_json(tmp_path: Path) -> None:
    # A machine without user namespaces (a default Docker container): the demo still shows the loop,
    # and its ground.json says explicitly that train.py runs unconfined, as a real workspace must.
    build_workspace(tmp_path, unconfined=True)
    assert load_ground(tmp_path / "ground.json").experiment.sandbox == "off"


@pytest.mark.slow
def test_demo_runs_the_loop(hermetic: Path, tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "gitar", "demo", str(dest)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "(baseline)" in out
    assert "smoke step failed" in out  # the broken idea was refused before training
    notes = subprocess.run(["git", "notes", "--ref", "gitar", "list"], cwd=dest, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    # The baseline, the experiment, and the refused idea: noted (kind smoke) on a commit no branch holds.
    assert len(notes) == 3
    attempts = subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/gitar/attempts/"], cwd=dest,
                              capture_output=True, text=True, check=True).stdout.split()
    assert len(attempts) == 3
    refused = [sha for sha in attempts if '"kind": "smoke"' in subprocess.run(
        ["git", "notes", "--ref", "gitar", "show", sha], cwd=dest, capture_output=True, text=True).stdout]
    assert len(refused) == 1
    assert subprocess.run(["git", "branch", "--contains", refused[0]], cwd=dest, capture_output=True,
                          text=True, check=True).stdout.strip() == ""
    # The refused idea is undone: the workspace handed over is clean, so the user's first try is theirs.
    assert "undoing the refused idea" in out
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=dest, capture_output=True,
                          text=True, check=True).stdout == ""
    verify = subprocess.run([sys.executable, "-m", "gitar", "verify"], cwd=dest, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = subprocess.run([sys.executable, "-m", "gitar", "demo", str(dest)], capture_output=True, text=True,
                           cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr
