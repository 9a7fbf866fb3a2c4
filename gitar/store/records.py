"""The lab notebook: one JSON record per run, stored as git notes on the attempted commit.

A note holds one line per run (several runs of one commit append lines), so
`git notes merge -s cat_sort_uniq` can merge notebooks of several writers without
conflicts. A note may also hold lesson lines (`gitar learn`): what was learned from
the experiment. A lesson is never a run, so `records()` leaves it out and every
reader that counts or averages runs is unaffected by it. Every attempted commit is
also pinned under refs/gitar/attempts/ because a note does not keep its commit alive:
without the pin, `git gc` would collect a discarded commit and turn its note into garbage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from gitar.numbers import rounded
from gitar.store import ledger, note_write, signing
from gitar.store.git import Git
from gitar.store.notes import note_blobs
from gitar.store.refs import NOTES_REF, attempt_ref
from gitar.text import json_line

SCHEMA = 1

# Statuses. keep/discard/crash/timeout are the judge's; the rest end a run before judging.
KEEP, DISCARD, CRASH, TIMEOUT = "keep", "discard", "crash", "timeout"
ABORTED = "aborted"  # gitar itself was interrupted; recorded by the interrupted process or the next command
REJECTED = "rejected"  # ran, but the result may not count (e.g. another experiment held the lock)
# confirm keep rule: a successful run of a candidate whose verdict comes with a later run of it (kind "confirm")
UNDECIDED = "undecided"
STATUSES = (KEEP, DISCARD, CRASH, TIMEOUT, ABORTED, REJECTED, UNDECIDED)
VERIFY = "verify"  # the kind of a `gitar verify --rerun` run: recorded, never counted (Record.ok)
# The kind of a change the pre-commit smoke step refused: a rejected record on a commit made only
# to hold it (pinned, never on the branch, never trained), so memory can warn against the idea.
SMOKE = "smoke"
LESSON = "lesson"  # the status field of a lesson line: not a run, not one of STATUSES


_LEAD = ("status", "val_bpb", "delta", "best_before", "description", "hypothesis", "reason", "commit", "branch", "kind")


def _round(v: Any) -> Any:
    # Six decimals is what autoresearch prints; more is float noise in a record meant to be read.
    # numbers.rounded: the stored number is the one every command prints.
    return rounded(v) if isinstance(v, float) else v


@dataclass
class Record:
    """One run of one commit. Field names are the JSON keys; None fields are left out."""

    status: str
    commit: str
    branch: str
    description: str
    run_id: str
    schema: int = SCHEMA
    # attempt (the run that decided) | baseline | rerun | confirm (an undecided run) | verify | smoke (SMOKE)
    kind: str = "attempt"
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
    # The last step line train.py printed before a run ended without a summary (a timeout, a crash,
    # an abort): how far it got, by its own log. Display only, as every figure train.py prints.
    last_step: int | None = None
    last_train_s: float | None = None  # the training seconds that line claimed
    depth: int | None = None
    seed: int | None = None
    started: str | None = None  # ISO 8601, UTC
    ended: str | None = None
    host: str | None = None
    platform: dict[str, str] | None = None  # device, dtype, attention
    harness_sha256: str | None = None  # sha256 over prepare.py and ground.json of the commit
    # sha256 over the commit's agent-owned files (gitar/loop/repeats.py): equal for two commits whose
    # train.py and model.json are the same, whatever their descriptions say.
    agent_sha256: str | None = None
    # The earlier attempt this one repeats (same agent_sha256 and harness): {"commit", "branch",
    # "status", "val_bpb", "times"} as it stood when this one was planned; see gitar/loop/repeats.py.
    repeat_of: dict[str, Any] | None = None
    log: str | None = None  # absolute path of the full training log
    error: dict[str, Any] | None = None  # type, message, traceback (last lines) for crashes and timeouts
    # A runner's Ed25519 signature over the canonical record without this field (gitar/store/signing.py):
    # {"key": key id, "sig": base64}. Written by `gitar ci` on a runner that holds a key.
    signature: dict[str, str] | None = None
    worktree: str | None = None  # "followed" or "kept-edits" after the branch moved
    noise: dict[str, Any] | None = None  # {"n", "std", "mad"} of the commit's runs once it has run twice
    margin: float | None = None  # the improvement a keep had to exceed (keep rules margin, confirm)
    # The σ the judge would use (the branch's measured noise, never below experiment.noise_floor)
    # when this run was judged; None while no noise was measured. A keep that improved by no more
    # is flagged "within noise" (review/flags.py noise_flag), under every keep rule.
    sigma: float | None = None
    # The mean tokens/s of the best's runs this run was judged against (train.py's summary, display
    # only): a run much slower or faster than the best probably ran on a machine loaded differently.
    best_tokens_per_s: float | None = None
    # Where val_bpb came from: "harness" (gitar's evaluator measured the model train.py exported)
    # or "reported" (train.py's own line; ground.json experiment.evaluate "reported", flagged by verify).
    val_bpb_source: str | None = None
    reported_val_bpb: float | None = None  # the val_bpb train.py printed, kept for comparison
    # How many bytes each token counted for in val_bpb (prepare.py's tokenizer.token_bytes):
    # "utf8-decoded" (upstream autoresearch's rule: numbers compare with its) or "raw".
    bytes_rule: str | None = None
    evaluation: dict[str, Any] | None = None  # the harness evaluation: shape, device, dtype, causality probe
    data_sha256: str | None = None  # sha256 over the evaluation files' hashes (tokenizer, validation shard)
    sandbox: str | None = None  # how train.py was confined: "bwrap <version>" or "off"
    limits: dict[str, Any] | None = None  # memory/process/file/log limits of the run and what enforced them
    # Where the experiment's wall time went, by gitar's clock, in seconds: smoke_s (the preflight's
    # smoke step, when this process ran it), setup_s (snapshot and sandbox until the trainer starts),
    # trainer_s, handoff_s (copying and hashing the export and the evaluation data), evaluator_s.
    # What is left of a `gitar try`'s wall time is the CLI, the commit and the record (benchmarks/bench_cost.py).
    timings: dict[str, float] | None = None
    gitar: dict[str, str] | None = None  # {"version", "sha256"}: the gitar that ran and measured it (version.py)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer gitar wrote, kept verbatim

    def to_line(self) -> str:
        data = {k: _round(v) for k, v in asdict(self).items() if v is not None and k != "extra"}
        data.update(self.extra)
        # Readable in `git log`: the verdict and the number first, bookkeeping after.
        ordered = {k: data.pop(k) for k in _LEAD if k in data}
        ordered.update(data)
        # One line, always, and nothing a terminal acts on (json_line): cat_sort_uniq merges by
        # line, and `git log --notes` prints the note raw.
        return json_line(ordered)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls._adopt(dict(data))  # a copy: the caller's dict stays its own

    @classmethod
    def _adopt(cls, data: dict[str, Any]) -> Record:
        """The record of a freshly parsed line, which becomes the record's attribute dict.

        Filled without the generated __init__: with ~40 fields it was most of the cost of
        reading 10,000 records. A field the line leaves out reads its default from the
        class, where dataclass keeps it; only default_factory fields get a value here.
        """
        if data.keys() <= _KNOWN:  # the usual case: a line this version of gitar wrote
            extra: dict[str, Any] = {}
        else:
            extra = {k: v for k, v in data.items() if k not in _KNOWN}
            for k in extra:
                del data[k]
        if not data.keys() >= _REQUIRED:
            raise TypeError(f"missing {', '.join(sorted(_REQUIRED - data.keys()))}")
        for name, factory in _FACTORIES:  # a fresh value each, as __init__ would make
            if name not in data:
                data[name] = factory()
        data["extra"] = extra
        record = object.__new__(cls)
        record.__dict__ = data
        return record

    @property
    def ok(self) -> bool:
        """A successful measurement that counts: it has a number that can be compared.

        A `gitar verify --rerun` run (kind "verify") is recorded but never counts: it checks a
        kept commit's number, and folding it in would move the best's mean, the noise and the
        bar later attempts must beat.
        """
        return self.status in (KEEP, DISCARD, UNDECIDED) and self.val_bpb is not None and self.kind != VERIFY

    @property
    def tokens_per_s(self) -> float | None:
        """Training throughput from train.py's summary: total_tokens_M over training_seconds (its claims)."""
        return tokens_per_s(self.total_tokens_M, self.training_seconds)


def tokens_per_s(total_tokens_m: float | None, training_seconds: float | None) -> float | None:
    if total_tokens_m is None or training_seconds is None or total_tokens_m <= 0 or training_seconds <= 0:
        return None
    return total_tokens_m * 1e6 / training_seconds


@dataclass(frozen=True)
class Lesson:
    """What was learned from an experiment (`gitar learn`): one line in the experiment's note."""

    commit: str
    lesson: str
    branch: str | None = None  # the branch checked out when it was written
    time: str | None = None  # ISO 8601, UTC

    def to_line(self) -> str:
        data = {"status": LESSON, "lesson": self.lesson, "commit": self.commit, "branch": self.branch,
                "time": self.time}
        return json_line({k: v for k, v in data.items() if v is not None})


_TEXT_FIELDS = ("status", "commit", "branch", "description", "run_id")
_NUMBER_FIELDS = ("val_bpb", "best_before", "delta", "peak_vram_mb", "training_seconds", "total_seconds",
                  "wall_seconds", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth",
                  "reported_val_bpb", "last_step", "last_train_s", "sigma", "best_tokens_per_s")
_warned: set[tuple[str, int, str]] = set()


def _check_types(data: dict[str, Any]) -> None:
    # A hand-edited note with a string where a number belongs would crash every reader later.
    # Exact types: json gives str, int, float, bool, None (and bool must not pass as a number).
    # Lookups over fixed tuples: a set intersection per record (10,000 per review command) cost
    # more than the checks themselves.
    get = data.get
    for key in _TEXT_FIELDS:
        v = get(key, "")
        if type(v) is not str:
            raise ValueError(f"{key} is not a string")
    for key in _NUMBER_FIELDS:
        v = get(key)
        if v is not None and type(v) is not float and type(v) is not int:
            raise ValueError(f"{key} is not a number")


# Computed once (dataclasses.fields() per record was a quarter of reading 10,000 notes).
_KNOWN = frozenset(f.name for f in fields(Record)) - {"extra"}
_REQUIRED = frozenset(f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING)
_FACTORIES: tuple[tuple[str, Callable[[], Any]], ...] = tuple(
    (f.name, f.default_factory) for f in fields(Record) if f.default_factory is not MISSING and f.name != "extra")


# The C scanner behind json.loads, called directly: loads() adds two regex matches and three
# Python calls per line, a quarter of parsing 10,000 records.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_line(line: str) -> Any:
    """json.loads(line) for a stripped line; on any failure json.loads itself raises its usual error."""
    try:
        value, end = _scan_once(line, 0)
    except StopIteration:
        return json.loads(line)
    if end != len(line):  # trailing data: let json.loads say so in its own words
        return json.loads(line)
    return value


def parse_lines(text: str, where: str, *, warn: bool = True) -> tuple[list[Record], list[Lesson]]:
    """The runs and the lessons of one note; a line that is neither is skipped with one warning
    (without, for warn=False: a reader whose output is not where the user looks)."""
    records: list[Record] = []
    lessons: list[Lesson] = []
    # Lines as git counts them (cat_sort_uniq merges notes by them): split at newlines only.
    # str.splitlines would also split at U+2028, U+2029 and U+0085, which json.dumps leaves
    # unescaped inside strings with ensure_ascii=False: a description holding one made its
    # record unreadable.
    newline = text.find("\n")
    one = newline == -1 or newline == len(text) - 1  # nearly every note: one run, one line
    for n, line in enumerate((text,) if one else text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            item = parse_line(line)
        except (ValueError, TypeError, RecursionError) as e:  # a forged note may nest 100,000 deep
            if warn:
                _warn_once(where, n, line, str(e))
            continue
        if type(item) is Lesson:
            lessons.append(item)
        else:
            records.append(item)  # type: ignore[arg-type]
    return records, lessons


def parse_line(line: str) -> Record | Lesson:
    """One stripped note line: a run's record or a lesson; ValueError, TypeError (or RecursionError) if neither."""
    data = _json_line(line)
    if type(data) is not dict or "status" not in data or "commit" not in data:
        raise ValueError("not a gitar record")
    _check_types(data)
    if data["status"] == LESSON:
        if not isinstance(data.get("lesson"), str):
            raise ValueError("a lesson line without its lesson text")
        return Lesson(commit=data["commit"], lesson=data["lesson"], branch=_str_or_none(data.get("branch")),
                      time=_str_or_none(data.get("time")))
    return Record._adopt(data)



def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _warn_once(where: str, n: int, line: str, why: str) -> None:
    # A command may read one note twice (the whole notebook, then the tip): one warning per bad line.
    key = (where, n, line)
    if key in _warned:
        return
    _warned.add(key)
    print(f"gitar: warning: skipping line {n} of the note on {where[:12]}: {why}", file=sys.stderr)


class Notebook:
    """Records in refs/notes/gitar and the attempt pins, for one repository: what every reader needs.

    Writing a record is NotebookWriter's: it cannot be made without naming what follows a write.
    """

    def __init__(self, git: Git) -> None:
        self.git = git

    def records(self, sha: str) -> list[Record]:
        return self.entry(sha)[0]

    def lessons(self, sha: str) -> list[Lesson]:
        return self.entry(sha)[1]

    def entry(self, sha: str) -> tuple[list[Record], list[Lesson]]:
        note = self.git.note(NOTES_REF, sha)
        if note is None:
            return [], []
        return parse_lines(note, sha)

    def all(self) -> Iterator[tuple[str, list[Record]]]:
        """(commit, records) for every annotated commit; one pass over the notes tree."""
        for commit, records, _ in self.entries():
            yield commit, records

    def entries(self) -> Iterator[tuple[str, list[Record], list[Lesson]]]:
        """(commit, records, lessons) for every annotated commit; one pass over the notes tree."""
        for annotated, data in note_blobs(self.git, NOTES_REF):
            yield annotated, *parse_lines(data.decode("utf-8", "replace"), annotated)

    def pin(self, sha: str, description: str) -> None:
        self.git.pin(attempt_ref(sha), sha, f"gitar: attempt {description[:60]}")

    def is_pinned(self, sha: str) -> bool:
        return self.git.ref_target(attempt_ref(sha)) == sha


# What must follow every write of the notebook, given the repository: the one-line summaries in
# git's own tools (review/summary.refresh) are derived from the records and would go stale unseen.
Follower = Callable[[Git], None]


class NotebookWriter(Notebook):
    """A Notebook that appends records and lessons; `follow` runs after each write.

    The follower is a required argument, not a default or an import from here: the store sits
    below the views derived from it, and a writer made without one would be a type error, never
    a silently stale `git log`. review/summary.writer makes the writer every caller uses.
    """

    def __init__(self, git: Git, follow: Follower) -> None:
        super().__init__(git)
        self._follow = follow

    def append(self, record: Record) -> None:
        """Add one line to the commit's note (the write happens before any branch move).

        Inside signing.signing(key) (`gitar ci` on a runner) the record is signed first. The
        ledger (gitar/store/ledger.py) learns the line's hash and the notes tip gitar left.
        """
        signer = signing.active()
        if signer is not None:
            record.signature = None
            record.signature = signer.sign(record_dict(record))
        line = record.to_line()
        self._append_line(record.commit, line, "the record")
        ledger.wrote(self.git, line, record.run_id, record.commit)
        self._follow(self.git)

    def add_lesson(self, lesson: Lesson) -> None:
        self._append_line(lesson.commit, lesson.to_line(), "the lesson")
        ledger.wrote(self.git, None, "", lesson.commit)
        self._follow(self.git)

    def _append_line(self, sha: str, line: str, what: str) -> None:
        note_write.append_line(self.git, NOTES_REF, sha, line, what)


def best_of(records: list[Record], branch: str) -> list[Record]:
    """The successful runs of a kept commit on one branch: the runs its best value averages."""
    if not any(r.status == KEEP and r.branch == branch for r in records):
        return []
    return [r for r in records if r.branch == branch and r.ok]


def record_dict(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(record.to_line())
    return out
