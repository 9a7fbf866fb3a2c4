"""The crash record: what failed, in which phase and at which step, as JSON at $GITAR_CRASH_FILE.

One writer for every process gitar starts that can fail on its own (the launcher around
train.py, the harness evaluator): gitar reads type, message, traceback, phase and step from
it into the run's record. Standard library only, so a failing import of torch is recorded too.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from gitar import shared
from gitar.errors import GitarError
from gitar.files import write_json_atomic

CRASH_TRACEBACK_LINES = 20  # the end of a traceback names the failing line; the rest is noise in a note
CRASH_MESSAGE_CHARS = 2000  # torch error messages can run to pages; the first part says what went wrong


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded: stop at once rather than spend the budget on it.

    The crash record names it by type, so gitar's notebook says the run diverged, not just failed.
    """


def crash_record(exc: BaseException, phase: str, step: int | None = None) -> dict[str, object]:
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    message = exc.message if isinstance(exc, GitarError) else str(exc)
    record: dict[str, object] = {"type": type(exc).__name__, "message": message[:CRASH_MESSAGE_CHARS],
                                 "traceback": lines[-CRASH_TRACEBACK_LINES:], "phase": phase}
    if step is not None:
        record["step"] = step
    return record


def report(exc: BaseException) -> int:
    """Say a failure the way every gitar process does and return its exit code: a GitarError as its
    one line (its code: 2 is the agent's input to fix), anything else as its traceback (1)."""
    if isinstance(exc, GitarError):
        print(exc.message, file=sys.stderr)
        return int(exc.code)
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    return 1


def fail(exc: BaseException, phase: str, step: int | None = None) -> int:
    """The crash record of exc (for gitar to read) and then its report (for the log); the exit code."""
    write_crash_record(exc, phase, step)
    return report(exc)


def write_crash_record(exc: BaseException, phase: str, step: int | None = None) -> None:
    """The failure as JSON at $GITAR_CRASH_FILE, atomically (a reader never sees half a record);
    nothing when the variable is unset (a run by hand)."""
    path = os.environ.get(shared.CRASH_FILE)
    if not path:
        return
    try:
        write_json_atomic(Path(path), crash_record(exc, phase, step))
    except OSError as e:  # the record is a courtesy: never let it hide the real failure
        print(f"warning: could not write the crash record to {path}: {e}", file=sys.stderr)
