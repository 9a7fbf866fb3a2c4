"""The lab notebook: one JSON record per run, stored as git notes on the attempted commit.

A note holds one line per run (several runs of one commit append lines), so
`git notes merge -s cat_sort_uniq` can merge notebooks of several writers without
conflicts. Every attempted commit is also pinned under refs/gitar/attempts/ because
a note does not keep its commit alive: without the pin, `git gc` would collect a
discarded commit and turn its note into garbage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pygit2

from gitar.git import Git

NOTES_REF = "refs/notes/gitar"
ATTEMPTS_PREFIX = "refs/gitar/attempts/"
SCHEMA = 1

# Statuses. keep/discard/crash/timeout are the judge's; the rest end a run before judging.
KEEP, DISCARD, CRASH, TIMEOUT = "keep", "discard", "crash", "timeout"
ABORTED = "aborted"  # gitar itself was interrupted; recorded by the interrupted process or the next command
REJECTED = "rejected"  # ran, but the result may not count (e.g. another experiment held the lock)
STATUSES = (KEEP, DISCARD, CRASH, TIMEOUT, ABORTED, REJECTED)


_LEAD = ("status", "val_bpb", "delta", "best_before", "description", "hypothesis", "reason", "commit", "branch", "kind")


def _round(v: Any) -> Any:
    # Six decimals is what autoresearch prints; more is float noise in a record meant to be read.
    return round(v, 6) if isinstance(v, float) else v


@dataclass
class Record:
    """One run of one commit. Field names are the JSON keys; None fields are left out."""

    status: str
    commit: str
    branch: str
    description: str
    run_id: str
    schema: int = SCHEMA
    kind: str = "attempt"  # attempt | baseline | rerun
    hypothesis: str | None = None
    parent: str | None = None
    val_bpb: float | None = None
    best_before: float | None = None  # the branch's best val_bpb this run was judged against
    best_commit: str | None = None
    delta: float | None = None  # val_bpb - best_before; negative is better
    rule: str | None = None  # the keep rule that decided
    reason: str | None = None  # why the judge decided as it did
    peak_vram_mb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    wall_seconds: float | None = None  # the training process as gitar timed it
    mfu_percent: float | None = None
    total_tokens_M: float | None = None
    num_steps: int | None = None
    num_params_M: float | None = None
    depth: int | None = None
    seed: int | None = None
    started: str | None = None  # ISO 8601, UTC
    ended: str | None = None
    host: str | None = None
    platform: dict[str, str] | None = None  # device, dtype, attention
    harness_sha256: str | None = None  # sha256 over prepare.py and ground.json of the commit
    log: str | None = None  # absolute path of the full training log
    error: dict[str, Any] | None = None  # type, message, traceback (last lines) for crashes and timeouts
    worktree: str | None = None  # "followed" or "kept-edits" after the branch moved
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer gitar wrote, kept verbatim

    def to_line(self) -> str:
        data = {k: _round(v) for k, v in asdict(self).items() if v is not None and k != "extra"}
        data.update(self.extra)
        # Readable in `git log`: the verdict and the number first, bookkeeping after.
        ordered = {k: data.pop(k) for k in _LEAD if k in data}
        ordered.update(data)
        # One line, always: json escapes newlines inside strings, and cat_sort_uniq merges by line.
        return json.dumps(ordered, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)} - {"extra"}
        args = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**args, extra=extra)

    @property
    def ok(self) -> bool:
        """A successful measurement: it has a number that can be compared."""
        return self.status in (KEEP, DISCARD) and self.val_bpb is not None


def parse_note(text: str, where: str) -> list[Record]:
    """Every valid record line of one note; a line that is not a record is skipped with one warning."""
    records: list[Record] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or "status" not in data or "commit" not in data:
                raise ValueError("not a gitar record")
            records.append(Record.from_dict(data))
        except (ValueError, TypeError) as e:
            print(f"gitar: warning: skipping line {n} of the note on {where[:12]}: {e}", file=sys.stderr)
    return records


class Notebook:
    """Records in refs/notes/gitar and the attempt pins, for one repository."""

    def __init__(self, git: Git) -> None:
        self.git = git

    def records(self, sha: str) -> list[Record]:
        try:
            note = self.git.repo.lookup_note(sha, NOTES_REF)
        except KeyError:
            return []
        return parse_note(note.message, sha)

    def append(self, record: Record) -> None:
        """Add one line to the commit's note (the write happens before any branch move)."""
        sha = record.commit
        try:
            existing = self.git.repo.lookup_note(sha, NOTES_REF).message
        except KeyError:
            existing = ""
        text = existing.rstrip("\n") + ("\n" if existing.strip() else "") + record.to_line() + "\n"
        sig = _signature(self.git.repo)
        try:
            self.git.repo.create_note(text, sig, sig, sha, NOTES_REF, True)
        except pygit2.GitError as e:
            from gitar.errors import ExitCode, GitarError

            raise GitarError(f"cannot write the record for {sha[:12]} to {NOTES_REF}: {e}; "
                             "check that .git is writable and has free space", ExitCode.INTERNAL) from None

    def all(self) -> Iterator[tuple[str, list[Record]]]:
        """(commit, records) for every annotated commit; one pass over the notes tree."""
        if self.git.ref_target(NOTES_REF) is None:
            return
        for note in self.git.repo.notes(NOTES_REF):  # type: ignore[call-arg]
            annotated = str(note.annotated_id)
            yield annotated, parse_note(note.message, annotated)

    def pin(self, sha: str, description: str) -> None:
        self.git.pin(ATTEMPTS_PREFIX + sha, sha, f"gitar: attempt {description[:60]}")

    def is_pinned(self, sha: str) -> bool:
        return self.git.ref_target(ATTEMPTS_PREFIX + sha) == sha


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature("gitar", "gitar@localhost")


def best_of(records: list[Record], branch: str) -> list[Record]:
    """The successful runs of a kept commit on one branch: the runs its best value averages."""
    if not any(r.status == KEEP and r.branch == branch for r in records):
        return []
    return [r for r in records if r.branch == branch and r.ok]


def record_dict(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(record.to_line())
    return out
