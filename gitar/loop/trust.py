"""Whether the notebook is still what gitar wrote: the checks before judging, verify's, and --accept.

Before gitar judges anything (gitar try, gitar run, the hook's run, gitar ci: the plan_*
functions of gitar/loop/experiment.py, and `gitar try` once more before it commits), three
things must hold, or gitar refuses with one line naming what moved and how to resolve it:

1. the notes ref exists if gitar wrote records, and descends from the notes commit gitar
   last left it at (gitar's appends and sync's merges always descend; a deletion or a
   rewind does not);
2. the branch the judgement builds on is where gitar last put it, or descends from it
   (a plain `git commit` on the branch is an experiment; a branch moved back or sideways
   is not gitar's doing);
3. every run the best's value averages is a line gitar wrote or synced (the ledger), or
   carries a valid signature of a runner ground.json trusts.

Nothing is deleted to resolve a mismatch: the user restores the ref the message names, or
accepts the current state with `gitar verify --accept`, which prints what it accepts and
records it in the ledger (records as `accepted`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gitar.config.schema import GROUND_FILE, ground_at
from gitar.errors import GitarError
from gitar.store import ledger, pins, signing
from gitar.store.git import Git
from gitar.store.ledger import Entry, Ledger, line_hash
from gitar.store.notes import note_blobs
from gitar.store.records import LESSON, Notebook, Record
from gitar.store.refs import LEDGER_NOTES, NOTES_REF, branch_ref

ACCEPT = "`gitar verify --accept`"


@dataclass(frozen=True)
class Line:
    """One record line of the notebook, as git stores it, and the record it holds."""

    commit: str
    text: str
    record: Record

    @property
    def sha256(self) -> str:
        return line_hash(self.text)

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.text)
        return out


def _parse(commit: str, text: str) -> Iterator[Line]:
    # Quiet: the notebook's readers already warn once about a line that is no record.
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
            if type(data) is not dict or data.get("status") == LESSON or "commit" not in data:
                continue
            record = Record.from_dict(data)
        except (ValueError, TypeError):
            continue
        yield Line(commit, line, record)


def note_lines(git: Git, commit: str) -> list[Line]:
    note = git.note(NOTES_REF, commit)
    if note is None:
        return []
    return list(_parse(commit, note))


def all_lines(git: Git) -> Iterator[Line]:
    for commit, data in note_blobs(git, NOTES_REF):
        yield from _parse(commit, data.decode("utf-8", "replace"))




def runner_keys(git: Git, branch: str) -> tuple[str, ...]:
    """The trusted runner keys: ground.json of the branch's base (user-owned, pinned), else of HEAD."""
    where = pins.base_commit(git, branch)
    if where is None and not git.head_is_unborn():
        where = git.resolve("HEAD")
    if where is None or git.blob_at(where, GROUND_FILE) is None:
        return ()
    try:
        ground = ground_at(git, where)  # read as every command reads it (duplicate keys refused too)
    except GitarError:
        return ()  # no policy to read: no runner is trusted
    return ground.experiment.runner_keys


# ---------------------------------------------------------------------------
# Before judging
# ---------------------------------------------------------------------------


def notes_problem(git: Git) -> str | None:
    """Why refs/notes/gitar is not what gitar left, or None."""
    book = Ledger.of(git)
    current = git.ref_target(NOTES_REF)
    if not book.exists():
        if current is None:
            return None
        return (f"{NOTES_REF} holds records but this clone has no ledger of what gitar wrote ({book.dir}: "
                f"made by an older gitar, or deleted); adopt the current records with {ACCEPT}")
    last = book.last_notes()
    if last is None or current == last:
        return None
    if current is None:
        return (f"{NOTES_REF} was deleted outside gitar (gitar last wrote {last[:7]}); restore it with "
                f"`git update-ref {NOTES_REF} {last}` or accept the loss with {ACCEPT}")
    if not git.descends(last, current):
        return (f"{NOTES_REF} was rewound or replaced outside gitar: it is at {current[:7]}, which does not "
                f"descend from {last[:7]}, where gitar last left it; restore it with "
                f"`git update-ref {NOTES_REF} {last}` or accept the current notes with {ACCEPT}")
    return None


def branch_problem(git: Git, branch: str, on: str | None) -> str | None:
    """Why `on` (the commit a judgement builds on) is not where gitar left the branch, or None."""
    if on is None:
        return None
    tip = Ledger.of(git).branch_tip(branch)
    if tip is None or git.descends(tip, on):
        return None
    return (f"{branch} is at {on[:7]}, which gitar did not put there: gitar left it at {tip[:7]} and "
            f"{on[:7]} does not descend from it; put it back with `git reset --keep {tip[:7]}` "
            f"or accept where it is with {ACCEPT}")


def best_problem(git: Git, branch: str, best_commit: str | None) -> str | None:
    """Why the best's value rests on a record gitar did not write or sync, or None.

    On a runner (`gitar ci`, signing its records) whose ground.json lists runner keys, a record
    synced from elsewhere counts only if a trusted runner signed it: the agents push to the
    remote the runner syncs from, so "synced" there vouches for nothing.
    """
    if best_commit is None:
        return None
    mine = [ln for ln in note_lines(git, best_commit) if ln.record.branch == branch]
    if not any(ln.record.status == "keep" for ln in mine):
        return None
    lines = [ln for ln in mine if ln.record.ok]
    book = Ledger.of(git)
    raw = book.raw()
    runner = signing.active() is not None
    suspect = [ln for ln in lines if ln.sha256.encode() not in raw]
    if runner:
        entries = book.entries()
        suspect += [ln for ln in lines if ln.sha256 in entries and entries[ln.sha256].origin != ledger.HERE]
    if not suspect:
        return None
    keys = runner_keys(git, branch)
    for ln in suspect:
        state, _ = signing.check(ln.data(), keys)
        if state == signing.TRUSTED:
            continue
        known = ln.sha256.encode() in raw
        if known and not keys:
            continue  # a synced record on a runner that trusts no key: there is nothing to check it against
        r = ln.record
        why = "its runner signature does not verify" if state == signing.BAD else \
            "synced, and this runner counts only records a trusted runner signed" if known else \
            "not in the ledger, not signed by a trusted runner"
        number = f" val_bpb {r.val_bpb:.6f}" if r.val_bpb is not None else ""
        way_out = "or add the key of the runner that measured it to ground.json experiment.runner_keys" if known \
            else f"or accept it with {ACCEPT}"
        return (f"the best of {branch}, {best_commit[:7]}, rests on a record gitar did not write "
                f"(run {r.run_id[:8]}: {r.status}{number}; {why}); `gitar verify` lists such records: "
                f"remove the line (`git notes --ref={NOTES_REF} edit {best_commit[:7]}`) {way_out}")
    return None


def vanished_problem(git: Git, commit: str | None) -> str | None:
    """Why the note on `commit` lacks record lines gitar wrote or synced there (`git notes edit`), or None."""
    if commit is None:
        return None
    raw = Ledger.of(git).raw()
    key = f" {commit} ".encode()
    if key not in raw:  # nearly always: one substring test, no parsing
        return None
    note = git.note(NOTES_REF, commit)
    present = {line_hash(t) for t in note.split("\n") if t.strip()} if note is not None else set()
    mine = [line.decode("utf-8", "replace").split(" ") for line in raw.split(b"\n") if key in line]
    removed = {parts[0] for parts in mine if len(parts) == 4 and parts[3] == ledger.REMOVED}
    gone = [parts for parts in mine
            if len(parts) == 4 and parts[3] != ledger.REMOVED and parts[0] not in present and parts[0] not in removed]
    if not gone:
        return None
    return (f"{len(gone)} record line{'s' if len(gone) != 1 else ''} gitar wrote on {commit[:7]} "
            f"{'are' if len(gone) != 1 else 'is'} gone from its note (run {gone[0][1][:8]}): removed outside gitar; "
            f"`gitar verify` lists them; restore the note from an older {NOTES_REF} commit (`git log {NOTES_REF}`) "
            f"or accept the loss with {ACCEPT}")


def unmeasured_problem(notebook: Notebook, branch: str, bar: str | None, has_best: bool) -> str | None:
    """Why `bar` (the commit whose records would be the best) has none while gitar left a kept best, or None.

    A commit made with the hooks off, on top of the best, has no verdict: judged on it, the
    next attempt would face no best at all and be kept as a "baseline".
    """
    if has_best or bar is None:
        return None
    tip = Ledger.of(notebook.git).branch_tip(branch)
    if tip is None or tip == bar:
        return None
    from gitar.loop.judge import current_best

    left = current_best(notebook, branch, tip)
    if left is None:
        return None
    return (f"{branch} is at {bar[:7]}, which has no verdict: gitar left the branch at its best {tip[:7]} "
            f"(val_bpb {left.val_bpb:.6f}), and an attempt on {bar[:7]} would face no best at all; put it back "
            f"with `git reset --keep {tip[:7]}` (then `gitar run {bar[:7]}` measures the commits in between) "
            f"or accept where it is with {ACCEPT}")


def check_judging(notebook: Notebook, branch: str, on: str | None, bar: str | None, best_commit: str | None, *,
                  unmeasured_ok: bool = False) -> None:
    """Refuse (exit 2) to judge on a notebook or branch that something other than gitar changed.

    on: the commit the judgement builds on (the attempt, or the commit re-measured); bar: the
    commit whose records are the best (the attempt's parent; the re-measured commit itself);
    best_commit: the best found there, if any. unmeasured_ok: the commit may lack a verdict
    (`gitar try --remote`, where the runner judges).
    """
    git = notebook.git
    checks: tuple[Callable[[], str | None], ...] = (
        lambda: notes_problem(git),
        lambda: branch_problem(git, branch, on),
        lambda: vanished_problem(git, bar),
        lambda: None if unmeasured_ok else unmeasured_problem(notebook, branch, bar, best_commit is not None),
        lambda: best_problem(git, branch, best_commit),
    )
    for check in checks:
        problem = check()
        if problem is not None:
            raise GitarError(problem)


# ---------------------------------------------------------------------------
# Synced records and --accept
# ---------------------------------------------------------------------------


def record_synced(git: Git, before: str | None, after: str, remote: str) -> None:
    """The record lines a sync merge brought (in `after`, not in `before`) join the ledger as synced."""
    entries: list[Entry] = []
    origin = f"{ledger.SYNCED}:{remote}"

    def lines_of(oid: str) -> set[str]:
        data = git.blob(oid)
        if data is None:
            return set()
        return {ln.strip() for ln in data.decode("utf-8", "replace").split("\n") if ln.strip()}

    book = Ledger.of(git)
    raw = book.raw()  # a tree rewritten with fan-out shows every note as new: skip what is known
    if before is None:  # this clone had no records: all of them came from the remote
        for line in all_lines(git):
            if line.sha256.encode() not in raw:
                entries.append(Entry(line.sha256, line.record.run_id, line.commit, origin))
    else:
        for change in git.tree_changes(before, after):
            commit = change.path.replace("/", "")  # flat or fanned-out notes trees
            old = lines_of(change.old_id) if change.status != "A" else set()
            for text in lines_of(change.new_id) - old:
                for parsed in _parse(commit, text):
                    if parsed.sha256.encode() not in raw:
                        entries.append(Entry(parsed.sha256, parsed.record.run_id, commit, origin))
    book.add(entries)
    book.set_notes(git, after)


def vanished(git: Git) -> list[Entry]:
    """Ledger lines (written here, synced, accepted) that are no longer in the notes, not accepted as gone."""
    book = Ledger.of(git)
    if not book.exists():
        return []
    present = {line_hash(t) for _, data in note_blobs(git, NOTES_REF)
               for t in data.decode("utf-8", "replace").split("\n") if t.strip()}
    seen: dict[str, Entry] = {}
    removed: set[str] = set()
    for line in book.raw().decode("utf-8", "replace").splitlines():
        parts = line.split(" ")
        if len(parts) != 4:
            continue
        if parts[3] == ledger.REMOVED:
            removed.add(parts[0])
        elif parts[0] not in seen:
            seen[parts[0]] = Entry(*parts)
    return [e for h, e in seen.items() if h not in present and h not in removed]


def accept(git: Git, branch: str | None) -> list[str]:
    """Record the current notes, their unknown records and the branch's tip in the ledger; say what."""
    book = Ledger.of(git)
    fresh = not book.exists()
    book.ensure()
    said: list[str] = []
    current = git.ref_target(NOTES_REF)
    last = book.last_notes()
    if current is None and last is not None:
        said.append(f"accepted: {NOTES_REF} is gone (gitar last left it at {last[:7]}, still kept as {LEDGER_NOTES})")
        book.clear_notes()
    elif current is not None and last is not None and not git.descends(last, current):
        said.append(f"accepted: {NOTES_REF} at {current[:7]} (gitar last left it at {last[:7]}, kept as {LEDGER_NOTES})")
    raw = book.raw()
    entries: list[Entry] = []
    for ln in all_lines(git) if current is not None else iter(()):
        if ln.sha256.encode() in raw:
            continue
        r = ln.record
        entries.append(Entry(ln.sha256, r.run_id, ln.commit, ledger.ACCEPTED))
        raw += ln.sha256.encode()  # the same line on two commits' notes is one entry each, said once
        if len(entries) <= 20:
            number = f" val_bpb {r.val_bpb:.6f}" if r.val_bpb is not None else ""
            said.append(f"accepted: record {ln.commit[:7]} (run {r.run_id[:8]}) {r.status}{number} on {r.branch} "
                        f"{'(adopted: no ledger yet)' if fresh else 'that gitar did not write'}")
    if len(entries) > 20:
        said.append(f"accepted: {len(entries) - 20} more records")
    gone = vanished(git)
    for e in gone[:20]:
        said.append(f"accepted: record {e.commit[:7]} (run {e.run_id[:8]}) is gone from the notes "
                    f"(it was {e.origin})")
    if len(gone) > 20:
        said.append(f"accepted: {len(gone) - 20} more records gone from the notes")
    entries += [Entry(e.sha256, e.run_id, e.commit, ledger.REMOVED) for e in gone]
    book.add(entries)
    if current is not None:
        book.set_notes(git, current, accept=True)
    if branch is not None:
        tip = git.ref_target(branch_ref(branch))
        left = book.branch_tip(branch)
        if tip is not None and tip != left:
            if left is not None and not git.descends(left, tip):
                said.append(f"accepted: {branch} at {tip[:7]} (gitar left it at {left[:7]})")
            book.set_branch(branch, tip)
    if not said:
        said.append("accepted: nothing; the ledger already matches the notes and the branch")
    return said
