"""Every attempt in one short line in git's own tools: the notes ref refs/notes/gitar-summary.

The records in refs/notes/gitar are for programs: one JSON line per run (~1.5 KB), which is
what cat_sort_uniq merges and every reader, the ledger's line hashes included, relies on.
A person reading the history with git gets, in this second notes ref, one line per attempt
(per branch it was tried on): exactly the row `gitar log` prints for it, without the sha —
status, val_bpb (the mean of its runs), delta to the best before it, memory, training
seconds, description, and why a failure failed. `gitar init` points `notes.displayRef` here
(plain `git log` shows these lines) and sets the `git attempts` alias, which lists every
attempted commit, kept or discarded, newest first (README, "History in git").

The summary is derived, never a source: nothing of gitar reads it back, it is neither
synced nor merged (every clone derives its own), and a damaged one misleads no judgement.
It follows the records: after gitar writes or merges records (the NotebookWriter that writer()
makes, whose follower this is; sync after a merge), it
rewrites the summaries of the notes that changed since the notes commit its own last commit
names, in one `git fast-import` — or rebuilds it whole when that commit is unknown (a fresh
clone, a notebook gitar did not write, a rewound one). A summary that cannot be written is
one warning line; the record is written all the same and the next refresh catches up.
"""

from __future__ import annotations

import subprocess
import sys
import time

from gitar.errors import GitarError
from gitar.review import history
from gitar.store.git import Git, GitObjectError, clean_env
from gitar.store.notes import note_blobs
from gitar.store.records import NotebookWriter, parse_lines
from gitar.store.refs import NOTES_REF, SUMMARY_REF
from gitar.text import safe

_DERIVED = "gitar: summary of "  # + the notes commit the summary was derived from
_NO_RECORDS = "gitar: no records yet"  # the summary before the first record
_ZERO = "0" * 40


def summary_text(commit: str, data: bytes) -> str:
    """The summary note of one records note: one line per branch it was tried on; '' if no runs."""
    records, _ = parse_lines(data.decode("utf-8", "replace"), commit, warn=False)
    lines = []
    for branch, runs in history.group_runs(records):
        a = history.attempt(commit, branch, tuple(runs))
        # One line whatever the records hold: safe() escapes line breaks and terminal controls,
        # since git prints a note raw.
        lines.append(safe(history.attempt_line(a)))
    return "".join(line + "\n" for line in lines)


def writer(git: Git) -> NotebookWriter:
    """The notebook every gitar writer appends through: each record or lesson refreshes the summary."""
    return NotebookWriter(git, follow=refresh)


# Agents of one clone refresh at once: whoever loses the race derives again from the newer tip.
REFRESH_TRIES = 10


class _Raced(Exception):
    """Another process moved the summary ref while this one derived its commit."""


def refresh(git: Git) -> None:
    """Bring the summary up to the records; a failure is one warning, never an error."""
    message = "other writers kept moving it"
    for _ in range(REFRESH_TRIES):
        try:
            _refresh(git)
            return
        except _Raced:
            continue  # another writer moved it: derive again from the newer tip
        except (GitarError, OSError, ValueError, GitObjectError) as e:
            message = e.message if isinstance(e, GitarError) else str(e)
            break
    print(f"gitar: warning: could not update {SUMMARY_REF} ({safe(message)}); the next record written, "
          "or `gitar init`, brings it up to date", file=sys.stderr)


def _refresh(git: Git) -> None:
    notes = git.ref_target(NOTES_REF)
    tip = git.ref_target(SUMMARY_REF)
    if notes is None:
        if tip is None:
            # notes.displayRef names this ref from `gitar init` on, and git warns on every
            # `git log` while it is missing: until the first record it is an empty notes commit.
            _write(git, None, None, [], True)
        return
    derived = _derived_from(git, tip)
    if derived == notes:
        return
    changes: list[tuple[str, str]] = []  # (annotated commit, summary text; '' to remove)
    if tip is not None and derived is not None and git.find_commit(derived) is not None:
        for change in git.tree_changes(derived, notes):
            gone = change.status == "D"
            annotated = change.path.replace("/", "")  # fanout: ab/cdef… is the note on abcdef…
            if len(annotated) != len(notes):
                continue  # not a note (git and libgit2 ignore such entries too)
            text = "" if gone else summary_text(annotated, git.blob(change.new_id) or b"")
            changes.append((annotated, text))
        whole = False
    else:
        changes = [(annotated, summary_text(annotated, data)) for annotated, data in note_blobs(git, NOTES_REF)]
        whole = True
    _write(git, tip, notes, changes, whole)


def _write(git: Git, tip: str | None, notes: str | None, changes: list[tuple[str, str]], whole: bool) -> None:
    """One commit on SUMMARY_REF: the changed notes (all of them, from an empty tree, if whole);
    notes None: no records yet (the next refresh rebuilds it whole)."""
    out = [f"commit {SUMMARY_REF}", f"committer gitar <gitar@localhost> {int(time.time())} +0000"]
    message = (_DERIVED + notes if notes is not None else _NO_RECORDS).encode()
    out.append(f"data {len(message)}")
    stream = [("\n".join(out) + "\n").encode(), message, b"\n"]
    if tip is not None:
        stream.append(f"from {tip}\n".encode())
    if whole:
        stream.append(b"deleteall\n")
    for annotated, text in changes:
        if text:
            body = text.encode()
            stream.append(f"N inline {annotated}\ndata {len(body)}\n".encode() + body + b"\n")
        elif not whole:
            stream.append(f"N {_ZERO} {annotated}\n".encode())  # the note is gone: so is its summary
    stream.append(b"\n")
    # fast-import: one process for one note or ten thousand. It refuses to move the ref unless
    # the new commit descends from where the ref is now: a concurrent refresh makes this one fail
    # (a warning), never loses the other's.
    proc = subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=git.root, env=clean_env(),
                          input=b"".join(stream) + b"done\n", capture_output=True)
    if proc.returncode != 0:
        if git.ref_target(SUMMARY_REF) != tip:
            raise _Raced
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitarError(f"git fast-import failed: {lines[0] if lines else proc.returncode}")


def _derived_from(git: Git, tip: str | None) -> str | None:
    if tip is None:
        return None
    commit = git.find_commit(tip)
    if commit is None:
        return None
    message = commit.message.strip()
    return message[len(_DERIVED):] if message.startswith(_DERIVED) else None

