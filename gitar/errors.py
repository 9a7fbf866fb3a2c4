"""The one error type for expected failures, and the exit codes it maps to.

Every failure a user or an agent can cause (bad input, wrong repository state,
a lock held elsewhere) is raised as a GitarError carrying one line that says
what is wrong and what to do. The CLI prints that line and exits with its code;
nothing else in the package calls sys.exit.
"""

from __future__ import annotations

import enum
import os
import tempfile
import time
import traceback
from pathlib import Path


class ExitCode(enum.IntEnum):
    """Documented exit codes (README, "Exit codes"). Distinct so a harness can branch on them."""

    OK = 0  # the command succeeded; for try, run and wait: the experiment ran and was kept
    NOT_KEPT = 1  # it ran and was discarded, crashed, timed out or was rejected after the run
    # The same code where a command has no experiment to keep (IntEnum aliases: one number, a name
    # that says what it means there).
    PROBLEMS_FOUND = 1  # `gitar verify` found something to doubt
    NO_VERDICT_YET = 1  # `gitar try --remote`: queued for a runner, its verdict comes later
    REFUSED = 2  # refused before running anything: bad input or a repository state to fix first
    INTERNAL = 3  # an unexpected failure inside gitar; the traceback is saved under .git/gitar/
    INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM; the attempt is recorded as aborted


class GitarError(Exception):
    """An expected failure: one line for the user, an exit code for the caller."""

    def __init__(self, message: str, code: ExitCode = ExitCode.REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


def save_traceback(directory: Path | None) -> str:
    """The exception being handled, written to a file of its own; the file's path for the one-line error.

    An unexpected failure is one line for the user (CLI and hooks alike) and the whole traceback
    for whoever fixes gitar: under .git/gitar/ when there is a repository, else the temp dir.
    """
    text = traceback.format_exc()
    base = directory or Path(tempfile.gettempdir()) / "gitar"
    try:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(text)
        return str(path)
    except OSError:
        return "(could not be saved)"
