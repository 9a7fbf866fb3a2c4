"""The notebook as the review commands last parsed it, kept in .git/gitar/cache/ between calls.

`gitar log`, `best`, `memory` and `plot` read every note of refs/notes/gitar: 10,000 JSON
records of ~1.5 KB take longer to parse than git takes to print them. Notes are immutable
blobs, so a note parsed once is parsed for good: this cache maps a note's blob id to what
its lines hold, with the notes tree it was listed from.

- A record is kept as its fields the review commands read (HOT) plus its line. It comes back
  as a PartialRecord: those fields are there at once, and the first read of any other field
  parses the line, so every reader sees the full record it would have parsed itself.
- A note with a line that is not a record or a lesson is never cached: it is parsed again
  each time, so its one warning is printed each time, as without the cache.
- When the notes tree is the one cached, nothing is listed or parsed; when it moved (a new
  record), the tree is listed again and only blobs not seen before are parsed.
- Only the review commands read it (history.load). Judging, verify, the ledger and the checks
  before judging read the notes themselves: the cache can mislead a display, never a verdict.
  It is written whole or not at all (a rename), and a file that does not have the shape written
  here is read as if there were none (and rewritten). What it holds is trusted as .git's own
  files are — the ledger, the hooks: whoever can write them can already run code here — and
  the sandbox keeps train.py away from all of them. So nothing read back is type-checked again:
  those checks, 10,000 times per call, were what the cache exists to save.
- marshal, not JSON: it loads several times faster, which is the point. Its format depends on
  the interpreter, so the file names the version that wrote it; another one starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gitar import __version__
from gitar.files import write_atomic
from gitar.paths import Paths
from gitar.store.git import Git, GitObjectError
from gitar.store.records import Lesson, Record, parse_line, parse_lines
from gitar.store.refs import NOTES_REF


def _origin(module: str) -> str | None:
    spec = importlib.util.find_spec(module)
    return spec.origin if spec is not None else None


# The fields history.Attempt and the review commands read from a run, and the required ones.
HOT = ("status", "commit", "branch", "description", "run_id", "kind", "val_bpb", "best_before", "peak_vram_mb",
       "training_seconds", "started", "ended", "hypothesis", "reason", "error",
       # steps, throughput and its flags, repeats (a log row shows them all)
       "num_steps", "last_step", "total_tokens_M", "best_tokens_per_s", "sigma", "agent_sha256", "repeat_of")
# What wrote the cache: this format, the code that parses and derives (a change to it makes what
# is kept stale), and the interpreter (marshal's format is its own).
# By module name, not file name: found without importing them (history imports this module).
_SOURCES = ("gitar.store.notes_cache", "gitar.store.records", "gitar.review.history", "gitar.numbers", "gitar.loop.result_line", "gitar.review.flags")
FORMAT = ("gitar-notes-cache", 3, __version__, sys.version_info[:2],
          hashlib.sha256(b"".join(Path(str(_origin(name))).read_bytes() for name in _SOURCES)).hexdigest())
_LINE = "_line"  # the record's full line (UTF-8), in a PartialRecord's __dict__ until it is completed


class _Completing:
    """A field a PartialRecord reads from its line the first time it is asked for (a non-data
    descriptor: once the full record is in the instance's __dict__, that is what is read)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.default = getattr(Record, name, None)  # where dataclass keeps a field's default

    def __get__(self, obj: PartialRecord | None, owner: type | None = None) -> Any:
        if obj is None:
            return self.default
        obj.complete()
        # A field the line leaves out has its default, as on a Record parsed from the line.
        return obj.__dict__.get(self.name, self.default)


class PartialRecord(Record):
    """A Record read from the cache: the HOT fields at once, the rest from its line on first use."""

    def complete(self) -> None:
        data = self.__dict__
        line = data.pop(_LINE, None)
        if line is None:
            return
        record = parse_line(line.decode())  # it parsed as a record when it was cached
        if not isinstance(record, Record):
            raise TypeError("a cached record line that is not a record")
        full = record.__dict__
        for key, value in full.items():
            data.setdefault(key, value)  # a field set on this record since it was read stays as set


for _name in Record.__dataclass_fields__:
    if _name not in HOT:
        setattr(PartialRecord, _name, _Completing(_name))
del _name


Derive = Callable[[str, list[Record], list[Lesson]], Any]


def entries(git: Git, derive: Derive) -> Iterator[tuple[str, list[Record], list[Lesson], Any]]:
    """(commit, records, lessons, derived) for every note under refs/notes/gitar: the records and
    lessons as Notebook.entries gives them, and derive(commit, records, lessons), kept with them.

    derive must depend on the note alone and return what marshal can write (history.derive).
    """
    tree_id = git.notes_tree(NOTES_REF)
    if tree_id is None:
        return
    path = Paths.of(git).notes_cache
    cached = _load(path)
    if cached is not None and cached[0] == tree_id:  # nothing changed since the last review
        try:
            yield from [_entry(git, annotated, blob, payload, derive) for annotated, blob, payload in cached[1]]
            return
        except (TypeError, ValueError, KeyError, AttributeError):  # not the shape _save writes
            cached = None
    for _ in range(2):
        known = {blob: payload for _, blob, payload in cached[1]} if cached is not None else {}
        listing = []
        for annotated, blob_id in git.notes_in(tree_id):
            payload = known.get(blob_id)
            if payload is None:
                payload = _payload(annotated, _data(git, blob_id), derive)
            listing.append((annotated, blob_id, payload))
        _save(path, tree_id, listing)  # first: building the records puts their lines into the HOT dicts
        try:
            built = [_entry(git, annotated, blob_id, payload, derive) for annotated, blob_id, payload in listing]
        except (TypeError, ValueError, KeyError, AttributeError):  # a damaged cache: parse every note
            cached = None
            continue
        yield from built
        return
    raise AssertionError("notes parsed afresh cannot fail to build")  # pragma: no cover


def _entry(git: Git, annotated: str, blob_id: str, payload: Any,
           derive: Derive) -> tuple[str, list[Record], list[Lesson], Any]:
    if payload is False:  # a note with a bad line: parsed again, so it warns again
        data = git.blob(blob_id) or b""
        records, lessons = parse_lines(data.decode("utf-8", "replace"), annotated)
        return annotated, records, lessons, derive(annotated, records, lessons)
    items, derived = payload
    records = []
    lessons = []
    for item in items:
        if len(item) == 4:  # a lesson: (commit, lesson, branch, time)
            commit, text, branch, time = item
            lessons.append(Lesson(commit=commit, lesson=text, branch=branch, time=time))
            continue
        hot, line = item  # a record: (its HOT fields, its line)
        hot[_LINE] = line
        record = object.__new__(PartialRecord)
        record.__dict__ = hot
        records.append(record)
    return annotated, records, lessons, derived


def _payload(annotated: str, data: bytes, derive: Derive) -> tuple[list[Any], Any] | bool:
    """What the cache keeps of one note: its lines in their order, and what derive makes of them;
    False when a line is neither a record nor a lesson (such a note is parsed anew each time, with
    its warning)."""
    items: list[Any] = []
    records: list[Record] = []
    lessons: list[Lesson] = []
    for line in data.decode("utf-8", "replace").split("\n"):
        line = line.strip()
        if not line:
            continue
        try:
            item = parse_line(line)
        except (ValueError, TypeError, RecursionError):
            return False
        if isinstance(item, Lesson):
            lessons.append(item)
            items.append((item.commit, item.lesson, item.branch, item.time))
        else:
            records.append(item)
            # The line as UTF-8 bytes: loaded without decoding, decoded only if the record is completed.
            items.append(({k: v for k in HOT if (v := item.__dict__.get(k)) is not None}, line.encode()))
    return items, derive(annotated, records, lessons)


def _data(git: Git, blob_id: str) -> bytes:
    try:
        return git.blob(blob_id) or b""
    except GitObjectError:  # a note whose blob is gone holds no record
        return b""


def _load(path: os.PathLike[str]) -> tuple[str, list[tuple[str, str, Any]]] | None:
    try:
        with open(path, "rb") as f:
            value = marshal.loads(f.read())  # marshal.load(f) would read the file item by item
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if type(value) is not tuple or len(value) != 3 or value[0] != FORMAT:
        return None
    tree, listing = value[1], value[2]
    if type(tree) is not str or type(listing) is not list:
        return None
    return tree, listing


def _save(path: os.PathLike[str], tree: str, listing: list[tuple[str, str, Any]]) -> None:
    """Write the cache beside the ledger; a read-only or full .git only makes the next read slower."""
    with contextlib.suppress(OSError, ValueError):  # whole or not at all: a reader sees the old or the new
        write_atomic(Path(path), marshal.dumps((FORMAT, tree, listing)))
