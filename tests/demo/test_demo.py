"""`gitar demo`: the README's first command, end to end on the CPU with the real trainer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import train
from gitar.commands.demo import STAGES, Stages, build_workspace, default_directory
from gitar.config.schema import load_ground


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
    train.load_model(tmp_path / "model.json", ground)
    assert (tmp_path / "hooks" / "gitar-hook").stat().st_mode & 0o111
    assert ground.experiment.sandbox == "bwrap"


def test_without_a_sandbox_the_demo_says_off_in_its_ground_json(tmp_path: Path) -> None:
    # A machine without user namespaces (a default Docker container): the demo still shows the loop,
    # and its ground.json says explicitly that train.py runs unconfined, as a real workspace must.
    build_workspace(tmp_path, unconfined=True)
    assert load_ground(tmp_path / "ground.json").experiment.sandbox == "off"


def test_each_stage_says_what_it_does_then_how_long_it_took() -> None:
    lines: list[str] = []
    now = iter([100.0, 100.0, 103.25, 103.5, 164.0])
    stages = Stages(2, lines.append, clock=lambda: next(now))
    with stages.stage("preparing data"):
        lines.append("$ python prepare.py")
    with stages.stage("the baseline", "a CPU run, ~1 min"):
        pass
    assert lines == ["\n==> [1/2] preparing data", "$ python prepare.py", "    done in 3.2s (total 3.2s)",
                     "\n==> [2/2] the baseline (a CPU run, ~1 min)", "    done in 60.5s (total 64.0s)"]


STAGE_LINE = re.compile(r"^==> \[(\d)/(\d)\] (.+)$")
DONE_LINE = re.compile(r"^    done in (\d+\.\d)s \(total (\d+\.\d)s\)$")


@pytest.mark.slow
def test_demo_runs_the_loop(hermetic: Path, tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "gitar", "demo", str(dest)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    print(out)  # what a user sees, stage by stage (pytest -s shows it)
    # Every stage is announced before its commands and timed after them, in order, and the totals add up.
    lines = proc.stdout.splitlines()
    starts = [i for i, ln in enumerate(lines) if STAGE_LINE.match(ln)]
    dones = [i for i, ln in enumerate(lines) if DONE_LINE.match(ln)]
    assert [int(STAGE_LINE.match(lines[i]).group(1)) for i in starts] == list(range(1, STAGES + 1))  # type: ignore[union-attr]
    assert len(dones) == STAGES and all(s < d for s, d in zip(starts, dones, strict=True))
    assert all(d < s for d, s in zip(dones, starts[1:], strict=False))
    totals = [float(DONE_LINE.match(lines[i]).group(2)) for i in dones]  # type: ignore[union-attr]
    assert totals == sorted(totals)
    assert "(baseline)" in out
    assert "discard" in out or "keep" in out  # git attempts shows the experiment's line
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
