"""Every ref gitar reads or writes, by name.

gitar keeps its state in git: the records in a notes ref, the attempts it measured, the
base and data pin of each experiment branch, the ledger's copy of the notes tip, and the
tracking refs `gitar sync` fetches into. Spelled once here so that what gitar owns under
refs/ can be read off one page (and a sync, a verify and a reset agree on it).
"""

from __future__ import annotations

HEADS_PREFIX = "refs/heads/"  # + branch
NOTES_REF = "refs/notes/gitar"  # one JSON record per line, a note per measured commit
SUMMARY_REF = "refs/notes/gitar-summary"  # one line per attempt for git's own tools, derived (review/summary.py)
GITAR_ROOT = "refs/gitar/"  # everything else gitar owns lives below this
ATTEMPTS_PREFIX = "refs/gitar/attempts/"  # + sha: every measured commit, kept or not, stays reachable
BASE_PREFIX = "refs/gitar/base/"  # + branch: the commit `gitar init` made the branch on (its harness)
DATA_PREFIX = "refs/gitar/data/"  # + branch: the prepared data the branch measures on (a blob)
LEDGER_NOTES = "refs/gitar/ledger/notes"  # the notes tip gitar last left, so a deletion can be undone
SYNC_SCRATCH_PREFIX = "refs/notes/gitar-sync/"  # + a unique id: where `gitar sync` merges two notebooks
NOTE_SCRATCH_PREFIX = "refs/notes/gitar-write/"  # + a unique id: where a record is written before the CAS


def branch_ref(branch: str) -> str:
    return HEADS_PREFIX + branch


def attempt_ref(sha: str) -> str:
    return ATTEMPTS_PREFIX + sha


def base_ref(branch: str) -> str:
    return BASE_PREFIX + branch


def data_ref(branch: str) -> str:
    return DATA_PREFIX + branch


def tracking_notes_ref(remote: str) -> str:
    """Where `gitar sync` fetches a remote's records."""
    return f"refs/notes/remotes/{remote}/gitar"


REMOTES_PREFIX = "refs/remotes/"


def tracking_branch_ref(remote: str, branch: str) -> str:
    return f"{REMOTES_PREFIX}{remote}/{branch}"


def tracked_branch(ref: str) -> str:
    """refs/remotes/<remote>/<branch> -> <branch>: the remote is one path component, the branch the rest."""
    return ref.removeprefix(REMOTES_PREFIX).partition("/")[2]


def tracking_pin_prefix(remote: str, prefix: str) -> str:
    """refs/gitar/base/ -> refs/gitar/remotes/<remote>/base/: a remote's bases and data pins."""
    return f"{GITAR_ROOT}remotes/{remote}/{prefix.removeprefix(GITAR_ROOT)}"
