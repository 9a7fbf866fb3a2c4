"""Repeats: an attempt whose agent-owned files are exactly an earlier attempt's, whatever it is called.

A description is the agent's word for a change; the files are the change. Two attempts
whose train.py and model.json (ground.json `experiment.agent_owned`) hold the same bytes,
under the same harness (prepare.py and ground.json, `harness_sha256`), are the same
experiment, so the second is a repeat even when its description is new. Every record
carries `agent_sha256`, one hash over the agent-owned files (path and blob id of each),
so an earlier attempt is found from the notes alone — discarded ones, pinned under
refs/gitar/attempts/, and ones another branch or a remote recorded. A note written
before records carried the hash is matched through its commit's tree instead.

What a repeat does is ground.json `experiment.repeats`: "run" (the default) runs it and
the result line and `gitar memory` say what it repeats; "refuse" refuses it in the
preflight (exit 2, nothing changed) when the earlier attempt ran to a result. A
re-measurement (`gitar run`, `--repeat N`, `verify --rerun`) measures the same commit
again on purpose and is never a repeat.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar.config.schema import REPEATS_REFUSE, Ground, owned
from gitar.errors import GitarError
from gitar.files import write_atomic
from gitar.loop.integrity import harness_sha256
from gitar.loop.opened import Opened
from gitar.loop.result_line import repeat_phrase
from gitar.numbers import rounded
from gitar.paths import Paths
from gitar.review import history
from gitar.store.git import Git
from gitar.store.notes import note_blobs
from gitar.store.records import ABORTED, SMOKE, Record
from gitar.store.refs import NOTES_REF

_FIELD = b'"agent_sha256"'  # how the key is spelled in every note line gitar writes (json_line)
_IDENTITY = re.compile(rb'"agent_sha256": "([0-9a-f]{64})"')
CONTENTS_FILE = "contents"  # .git/gitar/contents: the index of identities (contents())
_CONTENTS_MAGIC = "gitar-contents"


def content_sha256(files: Iterable[tuple[str, str]]) -> str:
    """The identity of a set of agent-owned files: sha256 over each path and its blob id, sorted.

    Blob ids are git's own content hashes, so equal files give equal identities without
    reading a byte of them, from a commit's tree and from an index alike.
    """
    h = hashlib.sha256()
    for path, blob in sorted(set(files)):
        h.update(path.encode("utf-8", "surrogateescape") + b"\0" + blob.encode("ascii") + b"\n")
    return h.hexdigest()


def commit_content(git: Git, sha: str, agent_owned: tuple[str, ...]) -> str | None:
    """agent_sha256 of a commit; None if the commit is not in this repository."""
    # Only the owned paths are looked up (a workspace tree holds gitar itself too): "dir/"
    # patterns stand for every file beneath, as owned() reads them.
    files = git.blob_ids(sha, agent_owned)
    return None if files is None else content_sha256(files)


def staged_content(git: Git, agent_owned: tuple[str, ...]) -> str:
    """agent_sha256 of the index being committed (inside a pre-commit hook: the hook's index)."""
    out = git.run("ls-files", "--stage", "-z", keep_hook_env=True).stdout
    files = []
    for entry in out.split("\0"):
        meta, tab, path = entry.partition("\t")
        fields = meta.split(" ")
        if tab and len(fields) == 3 and fields[2] == "0" and owned(path, agent_owned):
            files.append((path, fields[1]))
    return content_sha256(files)


@dataclass(frozen=True)
class Change:
    """What is about to be tried: its files' identity, its harness, the branch it is tried on."""

    content: str
    harness: str
    branch: str

    @classmethod
    def staged(cls, git: Git, ground: Ground) -> Change:
        # The index may change only agent-owned files (the ownership guard ran first), so its
        # harness is HEAD's.
        return cls(staged_content(git, ground.experiment.agent_owned), harness_sha256(git, git.resolve("HEAD")),
                   git.current_branch() or "")


@dataclass(frozen=True)
class Earlier:
    """An earlier attempt with the same files: one commit on one branch, as its runs read."""

    commit: str
    branch: str
    status: str
    val_bpb: float | None
    description: str
    started: str
    ran: bool  # it ran to a result about its files (not aborted, not stopped before it started)

    def as_dict(self, times: int) -> dict[str, Any]:
        out: dict[str, Any] = {"commit": self.commit, "branch": self.branch, "status": self.status}
        if self.val_bpb is not None:
            out["val_bpb"] = rounded(self.val_bpb)
        out["times"] = times
        return out


def _ran(r: Record) -> bool:
    """Whether a run says something about its files.

    One that gitar timed (wall_seconds: it trained, whatever came of it) or that the smoke
    step refused. Not one that never started: another experiment held the lock, its message
    broke the rules, the log's volume was full; nor one gitar itself was interrupted in.
    """
    return r.status != ABORTED and (r.wall_seconds is not None or r.kind == SMOKE)


def find(ws: Opened, change: Change, agent_owned: tuple[str, ...], exclude: str | None = None) -> list[Earlier]:
    """The earlier attempts with the change's files, the one to name first.

    First those that ran to a result, then this branch's before others', then the oldest.
    The commits come from the index of identities (contents()); each one's runs are read from
    its note and count only if their own agent_sha256 says so (or they predate it) and their
    harness is the change's.
    """
    git, notebook = ws.git, ws.notebook
    found: list[Earlier] = []
    for commit, identities in contents(git, ws.paths, agent_owned).items():
        if commit == exclude or change.content not in identities:
            continue
        runs = [r for r in notebook.records(commit) if r.harness_sha256 in (None, change.harness)]
        if any(r.agent_sha256 is None for r in runs) and commit_content(git, commit, agent_owned) != change.content:
            runs = [r for r in runs if r.agent_sha256 is not None]  # the lines without it are of other files
        found.extend(_attempts(commit, [r for r in runs if r.agent_sha256 in (None, change.content)]))
    found.sort(key=lambda e: (not e.ran, e.branch != change.branch, e.started, e.branch, e.commit))
    return found


def contents(git: Git, paths: Paths, agent_owned: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """{annotated commit: the agent_sha256 values its note holds}, for every note.

    Kept up to date in .git/gitar/contents, beside the notes tip it describes: a later call
    reads only the notes that changed since (one `git diff-tree` of the two notes commits),
    so a try on a notebook of 10,000 attempts does not parse 10,000 notes. Without a usable
    file, one pass over every note, which parses only notes holding an identity-less line
    (written before records carried it: the commit's tree decides) — others are scanned, not
    parsed. The file is only a cache: find() checks every record it names against its note.
    """
    tip = git.ref_target(NOTES_REF)
    if tip is None:
        return {}
    path = paths.base / CONTENTS_FILE
    key = hashlib.sha256("\0".join(agent_owned).encode()).hexdigest()[:16]
    cached = _read_contents(path, key)
    index: dict[str, frozenset[str]] | None = None
    if cached is not None and cached[0] == tip:
        return cached[1]
    if cached is not None:
        index = _updated(git, cached[0], tip, dict(cached[1]), agent_owned)
    if index is None:
        index = {commit: _identities(git, commit, data, agent_owned) for commit, data in note_blobs(git, NOTES_REF)}
    _write_contents(path, key, tip, index)
    return index


def _identities(git: Git, commit: str, data: bytes, agent_owned: tuple[str, ...]) -> frozenset[str]:
    found = set(_IDENTITY.findall(data))
    out = {m.decode("ascii") for m in found}
    # A line without the key predates it (or was written by recovery for a dead run): the tree decides.
    if data.count(b'"status"') > data.count(_FIELD) or not out:
        legacy = commit_content(git, commit, agent_owned)
        if legacy is not None:
            out.add(legacy)
    return frozenset(out)


def _updated(git: Git, old: str, new: str, index: dict[str, frozenset[str]],
             agent_owned: tuple[str, ...]) -> dict[str, frozenset[str]] | None:
    """The index at notes commit `old` brought to `new`; None if git cannot compare the two."""
    proc = git.run("diff-tree", "-r", "--no-renames", "--no-commit-id", "--raw", "-z", old, new, check=False)
    if proc.returncode != 0:
        return None  # e.g. the old notes commit is gone (gc after a rewind)
    fields = proc.stdout.split("\0")
    changes = [(meta.split(" "), path.replace("/", "").lower())
               for meta, path in zip(fields[0::2], fields[1::2], strict=False) if len(meta.split(" ")) >= 5]
    # Deletions first: when git spreads notes into fanout subtrees, one note is deleted at its
    # old path and added at its new one, and the deletion may come after the addition.
    for parts, commit in changes:
        if parts[4].startswith("D"):
            index.pop(commit, None)
    for parts, commit in changes:
        data = None if parts[4].startswith("D") else git.blob(parts[3])
        if data is not None:
            index[commit] = _identities(git, commit, data, agent_owned)
    return index


def _read_contents(path: Path, key: str) -> tuple[str, dict[str, frozenset[str]]] | None:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.split("\n")
    head = lines[0].split(" ")
    if len(head) != 4 or head[:2] != [_CONTENTS_MAGIC, "1"] or head[3] != key or lines[-1] != "":
        return None  # another format, other agent_owned patterns, or cut short: rebuild
    index: dict[str, frozenset[str]] = {}
    for line in lines[1:-1]:
        commit, _, ids = line.partition(" ")
        index[commit] = frozenset(ids.split(" ")) if ids else frozenset()
    return head[2], index


def _write_contents(path: Path, key: str, tip: str, index: dict[str, frozenset[str]]) -> None:
    body = "".join(f"{c} {' '.join(sorted(ids))}\n" for c, ids in index.items())
    with contextlib.suppress(OSError):  # only a cache: the next call builds it again
        write_atomic(path, f"{_CONTENTS_MAGIC} 1 {tip} {key}\n{body}")


def _attempts(commit: str, runs: list[Record]) -> Iterable[Earlier]:
    by_branch: dict[str, list[Record]] = {}
    for r in runs:
        by_branch.setdefault(r.branch, []).append(r)
    for branch, mine in by_branch.items():
        mine.sort(key=lambda r: r.started or r.ended or "")  # time order, as history.load sorts a note's runs
        a = history.attempt(commit, branch, tuple(mine))
        yield Earlier(commit, branch, a.status, a.val_bpb, a.description, mine[0].started or "",
                      any(_ran(r) for r in mine))


def summary(earlier: list[Earlier]) -> dict[str, Any] | None:
    """What a record says it repeats (Record.repeat_of): the first of `earlier` and how many there are."""
    return earlier[0].as_dict(len(earlier)) if earlier else None


def refusal(earlier: list[Earlier], ground: Ground, branch: str) -> str | None:
    """Why the change may not run under experiment.repeats "refuse", or None.

    Only a repeat of an attempt that ran to a result is refused: one that never started
    (the lock was held, gitar was interrupted) has no result yet, and running it is how to get one.
    """
    if ground.experiment.repeats != REPEATS_REFUSE or not earlier or not earlier[0].ran:
        return None
    first = earlier[0]
    files = " and ".join(ground.experiment.agent_owned)
    phrase = repeat_phrase(first.as_dict(len(earlier)), branch) or f"repeat of {first.commit[:7]}"
    return (f"{phrase} \"{history.one_line(first.description, 60)}\": {files} are identical to it, and ground.json "
            f"experiment.repeats is \"refuse\"; change something (`gitar show {first.commit[:7]}` has its diff), "
            "or re-measure a kept commit with `gitar run --repeat N`")


def check(ws: Opened, ground: Ground, change: Change) -> list[Earlier]:
    """The preflight's check: refuse a repeat under "refuse"; return the earlier attempts found."""
    earlier = find(ws, change, ground.experiment.agent_owned)
    reason = refusal(earlier, ground, change.branch)
    if reason is not None:
        raise GitarError(reason)
    return earlier
