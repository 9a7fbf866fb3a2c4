"""Adding a line to a note when other processes write the same notes ref.

Every agent of a clone (its worktrees, `gitar learn` during a run, `gitar sync`) writes one
notes ref. Neither libgit2's note API nor `git notes` moves the ref with compare-and-swap
under concurrency: measured with two processes appending 200 lines each, libgit2 dropped
about a third of them without an error. So the note commit is made on a private scratch
ref, and only `git update-ref REF NEW OLD` — a compare-and-swap under git's lock — moves the
real one; if another writer moved it meanwhile, the line is appended again on top of theirs.
"""

from __future__ import annotations

import random
import time

from gitar.errors import ExitCode, GitarError
from gitar.store.git import Git, GitObjectError
from gitar.store.refs import NOTE_SCRATCH_PREFIX

# Ten agents recording at the same moment each lose at most nine races in a row; the
# backoff spreads their retries so that the next round is not a tie again.
WRITE_TRIES = 40
BACKOFF_S = 0.02


def append_line(git: Git, ref: str, annotated: str, line: str, what: str) -> None:
    """Append `line` to the note on `annotated` under `ref`; no other writer's line is lost."""
    why = ""
    with git.scratch_ref(NOTE_SCRATCH_PREFIX) as scratch:
        for attempt in range(WRITE_TRIES):
            old = git.ref_target(ref)
            try:
                new = git.note_with_line(scratch, old, annotated, line)
            except GitObjectError as e:  # RefLocked among them: libgit2 met another writer's lock file
                why = str(e)
            else:
                proc = git.run("update-ref", "-m", f"gitar: {what} for {annotated[:12]}", ref, new, old or "",
                               check=False)
                if proc.returncode == 0:
                    return
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            time.sleep(random.uniform(0, BACKOFF_S * (attempt + 1)))
    raise GitarError(f"cannot write {what} for {annotated[:12]} to {ref}: {why}; "
                     "check that .git is writable and has free space", ExitCode.INTERNAL)

