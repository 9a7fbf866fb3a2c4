"""A hermetic git environment (git-revise style).

Temporary HOME, no system or global config, fixed author and dates: what a test sees
does not depend on the machine it runs on, and nothing touches the developer's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gitar import shared

REPO_ROOT = Path(__file__).resolve().parent.parent

_GIT_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX", "GIT_EDITOR", "GIT_CONFIG",
             "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT")
GITAR_PREFIX = "GITAR_"  # every variable gitar's processes share starts so (gitar/shared.py)


def env_without_gitar(**sets: str) -> dict[str, str]:
    """The environment for a child prepare.py, train.py or tool run by hand: none of gitar's
    variables leaking in from outside (a lock token, a seed, an export path), plus `sets`."""
    return shared.environment(prefixes=(GITAR_PREFIX,), sets=sets)


def apply_hermetic(mp: pytest.MonkeyPatch, home: Path, pre_commit_home: Path | None, *,
                   fixed_dates: bool = True) -> None:
    """Point git and pre-commit at `home` only: no system or global config but ours, a fixed identity.
    The one hermetic setup of every scope: tests/conftest.py's `hermetic` (a test), the session
    fixtures through hermetic_session or a MonkeyPatch context of their own."""
    home.mkdir(parents=True, exist_ok=True)
    for var in (*_GIT_VARS, *(k for k in os.environ if k.startswith(GITAR_PREFIX))):
        mp.delenv(var, raising=False)
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    if pre_commit_home is not None:
        mp.setenv("PRE_COMMIT_HOME", str(pre_commit_home))
    for who in ("AUTHOR", "COMMITTER"):
        mp.setenv(f"GIT_{who}_NAME", "Test Researcher")
        mp.setenv(f"GIT_{who}_EMAIL", "researcher@example.com")
        if fixed_dates:
            mp.setenv(f"GIT_{who}_DATE", "2026-01-01T00:00:00+00:00")
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")


@contextmanager
def hermetic_session(home: Path) -> Iterator[None]:
    """What tests/conftest.py's `hermetic` gives a test, for a session-scoped fixture (which sets
    PRE_COMMIT_HOME itself), with the dates left to run."""
    with pytest.MonkeyPatch.context() as mp:
        apply_hermetic(mp, home, None, fixed_dates=False)
        yield


def hermetic_process(home: Path) -> None:
    """The same setup for the rest of a benchmark script's process (no test to undo it after);
    dates run, since a benchmark times real work."""
    apply_hermetic(pytest.MonkeyPatch(), home, home / ".pre-commit", fixed_dates=False)
