"""The ledger: what gitar itself wrote to the notebook, and where it left each branch.

refs/notes/gitar and the experiment branches are plain git refs: anything that runs git
(a process train.py left behind in an old version, the agent's shell, another tool) can
delete them, rewind them, or write a note that looks like a record. The ledger is gitar's
own account, kept beside the logs under the git dir (.git/gitar/ledger/, outside the work
tree, shared by every worktree like the notes):

- `records`: one line per record line gitar wrote, `<sha256 of the line> <run id> <commit>
  <origin>`, origin `here` (gitar wrote it in this clone), `synced:<remote>` (`gitar sync`
  brought it) or `accepted` (a person accepted it with `gitar verify --accept`); `removed`
  marks a line a person accepted as gone from the notes. Appended
  with O_APPEND, one write per line: lines of concurrent writers never interleave.
- `notes`: the notes commit gitar last left refs/notes/gitar at; it is also pinned as
  refs/gitar/ledger/notes so that a deleted or rewound notes ref loses nothing to gc.
- `branches/<branch>`: the tip gitar last set or accepted for each experiment branch.

Writes cost a few small file writes per record (no git process); reads happen only before
judging and in `gitar verify`, never in the review commands. The checks built on it are in
gitar/loop/trust.py. What the ledger cannot do: the agent's shell can write it too, on the same
machine. The trust anchor against that is a runner's signature (gitar/store/signing.py).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gitar.files import write_atomic
from gitar.paths import Paths
from gitar.store.git import Git, RefLocked
from gitar.store.refs import LEDGER_NOTES, NOTES_REF

HERE = "here"
SYNCED = "synced"  # written as synced:<remote>
ACCEPTED = "accepted"
REMOVED = "removed"  # a line gitar wrote is gone from the notes, and a person accepted that

# Tries at the keep-alive ref while another writer holds its lock: growing waits, 0.2-1 s in all,
# far longer than a writer holds it (one small file write).
KEEP_ALIVE_TRIES = 20


def line_hash(line: str) -> str:
    """The ledger's name for one record line: sha256 of the line as git stores it, stripped."""
    return hashlib.sha256(line.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    sha256: str
    run_id: str
    commit: str
    origin: str


class Ledger:
    def __init__(self, common_dir: Path) -> None:
        self.dir = Paths(common_dir).ledger

    @classmethod
    def of(cls, git: Git) -> Ledger:
        return cls(git.common_dir)

    @property
    def _records(self) -> Path:
        return self.dir / "records"

    @property
    def _notes(self) -> Path:
        return self.dir / "notes"

    def exists(self) -> bool:
        return self.dir.is_dir()

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------

    def add(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.ensure()
        text = "".join(f"{e.sha256} {e.run_id or '-'} {e.commit} {e.origin}\n" for e in entries)
        fd = os.open(self._records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)

    def raw(self) -> bytes:
        """The records file as it is: a substring test on it answers "did gitar write this line?"."""
        try:
            return self._records.read_bytes()
        except FileNotFoundError:
            return b""

    def entries(self) -> dict[str, Entry]:
        """{sha256: entry}, the first entry of each line (the origin gitar first saw it with)."""
        out: dict[str, Entry] = {}
        for line in self.raw().decode("utf-8", "replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 4 and parts[0] not in out:
                out[parts[0]] = Entry(*parts)
        return out

    # -- the notes tip -----------------------------------------------------------

    def last_notes(self) -> str | None:
        try:
            text = self._notes.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def set_notes(self, git: Git, tip: str | None, *, accept: bool = False) -> None:
        """gitar left the notes ref at `tip`. Unless accepting, only forward: a record appended to a
        notebook that was rewound meanwhile must not make the ledger forget the rewind."""
        if tip is None:
            return
        last = self.last_notes()
        if not accept and last is not None and last != tip and not git.descends(last, tip):
            return
        self.ensure()
        write_atomic(self._notes, tip + "\n")
        _keep_alive(git, tip)

    def clear_notes(self) -> None:
        """gitar no longer claims a notes tip (the user accepted that the notes ref is gone)."""
        self._notes.unlink(missing_ok=True)

    # -- branch tips -------------------------------------------------------------

    def _branch_file(self, branch: str) -> Path:
        # One file per branch: worktrees on other branches never rewrite each other's entries.
        return self.dir / "branches" / quote(branch, safe="")

    def branch_tip(self, branch: str) -> str | None:
        try:
            text = self._branch_file(branch).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def set_branch(self, branch: str, sha: str) -> None:
        path = self._branch_file(branch)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, sha + "\n")


def _keep_alive(git: Git, tip: str) -> None:
    """refs/gitar/ledger/notes at tip: keeps the notes commit alive should the notes ref go.

    In-process (no git process per record). Agents of one clone write at once, so the ref's lock
    may be another writer's for a moment: try again, unless the ref
    has meanwhile reached tip or beyond, which keeps tip alive as well.
    """
    for attempt in range(KEEP_ALIVE_TRIES):
        current = git.ref_target(LEDGER_NOTES)
        if current is not None and (current == tip or git.descends(tip, current)):
            return
        try:
            git.keep_ref(LEDGER_NOTES, tip)
            return
        except RefLocked:  # the ref's lock is another writer's
            time.sleep(random.uniform(0.001, 0.005) * (attempt + 1))


def wrote(git: Git, line: str | None, run_id: str, commit: str) -> None:
    """After gitar wrote a line to the notes (a record, or None for a lesson): the ledger follows."""
    ledger = Ledger.of(git)
    if line is not None:
        ledger.add([Entry(line_hash(line), run_id, commit, HERE)])
    ledger.set_notes(git, git.ref_target(NOTES_REF))


def branch_set(git: Git, branch: str, sha: str) -> None:
    """gitar put `branch` at `sha` (or accepted it there)."""
    Ledger.of(git).set_branch(branch, sha)
