"""git and gitar run as a user runs them: a child process in a repository, output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testing.hermetic import REPO_ROOT

TIMEOUT_S = 600  # a training run under the fixture's budget; a hang fails the test instead of CI


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def gitar(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI of this checkout (PYTHONPATH), in the test's hermetic environment."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "gitar", *args], cwd=root, capture_output=True, text=True,
                          env=env, timeout=TIMEOUT_S)
