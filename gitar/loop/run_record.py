"""The one builder of a run's record: the fields every record carries, whatever ended the run.

Four places end a run with a record: the run itself (experiment.py, full or interrupted), a
refusal after the commit (experiment.rejected), the next command finishing a run whose gitar
died (recovery.py), and the smoke step refusing a change (preflight.py). Each knows its own
fields; the identity of the run is filled here alone, so no kind of record lacks one: which
gitar wrote and measured it (version.identity), on which host, under which harness (the
commit's prepare.py and ground.json, integrity.harness_sha256), and when it started, in the
one spelling of a record's times (numbers.iso_time).
"""

from __future__ import annotations

import socket
from typing import Any

from gitar import numbers, version
from gitar.errors import GitarError
from gitar.loop import integrity
from gitar.store.git import Git
from gitar.store.records import Record


def build(git: Git, status: str, *, commit: str, branch: str, description: str, run_id: str, kind: str,
          started: float, reason: str | None, hypothesis: str | None = None, parent: str | None = None,
          seed: int | None = None, harness_sha256: str | None = None, **own: Any) -> Record:
    """The record of one run of `commit`; `own` holds the fields of its kind (Record's names).

    started: epoch seconds. harness_sha256: the caller's hash of the harness, when it has one
    already; else it is computed from the commit, and left out only where the commit is not in
    the repository (a running-state file naming a commit that is gone): the record is written all the same.
    """
    return Record(
        status=status, commit=commit, branch=branch, description=description, hypothesis=hypothesis,
        run_id=run_id, kind=kind, parent=parent, reason=reason, seed=seed, started=numbers.iso_time(started),
        host=socket.gethostname(),
        harness_sha256=harness_sha256 if harness_sha256 is not None else _harness(git, commit),
        gitar=version.identity(), **own)


def _harness(git: Git, commit: str) -> str | None:
    try:
        return integrity.harness_sha256(git, commit)
    except GitarError:  # Git.commit: not a commit in this repository
        return None
