"""The attempts of a branch in time order, read from the records in git.

Everything the review commands show (log, best, memory, plot) is computed here from
refs/notes/gitar alone: one bulk pass over the notes (parsed once per note blob and kept
in .git/gitar/cache/, gitar/store/notes_cache.py), never one lookup per commit, and never a file
in the work tree that an agent could edit or a reset could delete.
An attempt is one commit on one branch with all of its runs there (the attempt itself,
re-measurements) and the lessons learned from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gitar import numbers
from gitar.host import state
from gitar.paths import Paths
from gitar.review import flags
from gitar.review.noise import Noise, noise_from
from gitar.store import notes_cache
from gitar.store.git import Git
from gitar.store.records import (
    ABORTED,
    CRASH,
    DISCARD,
    KEEP,
    REJECTED,
    SMOKE,
    TIMEOUT,
    UNDECIDED,
    Lesson,
    Record,
    tokens_per_s,
)
from gitar.store.refs import branch_ref
from gitar.text import safe

FAILED = (CRASH, TIMEOUT, ABORTED)  # ran and produced no number


@dataclass(frozen=True)
class Attempt:
    """One commit on one branch with its runs there (build it with `attempt()`)."""

    commit: str
    branch: str
    runs: tuple[Record, ...]  # in the order they ran
    lessons: tuple[Lesson, ...]
    started: float | None  # when its first run started (epoch seconds), if its record says
    # Computed once by attempt(): read many times per attempt, 10,000 attempts per command.
    status: str  # keep if any run kept it, else the verdict of its latest decided run
    values: tuple[float, ...]  # val_bpb of its successful runs
    val_bpb: float | None  # their mean: the number the judge compares against
    delta: float | None  # val_bpb against the best it was judged against; None for baselines and failures
    memory_gb: float | None  # the largest peak memory of its successful runs
    training_seconds: float | None  # the mean training time of its successful runs (of all runs if none)

    @property
    def first(self) -> Record:
        return self.runs[0]

    @functools.cached_property
    def line(self) -> str:
        """attempt_line(): the row `gitar log` prints for it, without the sha."""
        return attempt_line(self)

    @functools.cached_property
    def tsv(self) -> tuple[str, str, str, str] | None:
        """tsv_fields(): its results.tsv row without the sha."""
        return tsv_fields(self)

    @property
    def ok_runs(self) -> list[Record]:
        return [r for r in self.runs if r.ok]

    @property
    def best_before(self) -> float | None:
        """The best its first run faced (re-measurements of a kept commit face the commit itself)."""
        return self.first.best_before

    @property
    def kind(self) -> str:
        """attempt (a new commit, confirm re-runs included), baseline or rerun: a measurement of the branch
        as it was, or smoke: a change the smoke step refused (never on the branch, never run)."""
        return self.first.kind if self.first.kind in ("baseline", "rerun", SMOKE) else "attempt"

    @property
    def content(self) -> str | None:
        """Its agent_sha256: the identity of its train.py and model.json (gitar/loop/repeats.py), if recorded."""
        return next((r.agent_sha256 for r in self.runs if isinstance(r.agent_sha256, str)), None)

    @property
    def repeat_of(self) -> str | None:
        """The earlier attempt with the same files its record names (repeat_of.commit), if any."""
        rep = self.first.repeat_of
        commit = rep.get("commit") if isinstance(rep, dict) else None
        return commit if isinstance(commit, str) and commit else None

    @property
    def is_baseline(self) -> bool:
        """The first measurement of the branch: kept with nothing to be judged against."""
        return self.status == KEEP and self.best_before is None and self.val_bpb is not None

    @property
    def description(self) -> str:
        return self.first.description

    @property
    def hypothesis(self) -> str | None:
        return next((r.hypothesis for r in self.runs if r.hypothesis), None)

    @property
    def num_steps(self) -> int | None:
        """The steps train.py reported (the mean of its successful runs); for a run without a
        summary (a timeout, a crash), the last step its log showed. Display only."""
        if len(self.runs) == 1:
            r = self.first
            return r.num_steps if r.num_steps is not None else r.last_step
        steps = [r.num_steps for r in self.runs if r.ok and r.num_steps is not None]
        if steps:
            return round(sum(steps) / len(steps))
        last = self.runs[-1]
        return last.num_steps if last.num_steps is not None else last.last_step

    @property
    def tokens_per_s(self) -> float | None:
        """The mean training throughput of its successful runs, from train.py's summaries."""
        runs = self.runs
        if len(runs) == 1:
            r = runs[0]
            return tokens_per_s(r.total_tokens_M, r.training_seconds) if r.ok else None
        rates = [x for x in (r.tokens_per_s for r in runs if r.ok) if x is not None]
        return sum(rates) / len(rates) if rates else None

    @property
    def flags(self) -> list[str]:
        """What a reader should doubt about its number: a throughput far from the best's, a keep within noise."""
        return self.flags_at(self.tokens_per_s)

    def flags_at(self, rate: float | None) -> list[str]:
        """flags, given its tokens_per_s (`gitar log` has it already: 10,000 rows)."""
        found = []
        if self.status == KEEP:
            sigma = next((r.sigma for r in reversed(self.runs) if r.status == KEEP and r.sigma is not None), None)
            found.append(flags.noise_flag(self.status, self.kind, self.delta, sigma))
        best_rate = self.runs[0].best_tokens_per_s
        if best_rate is not None and rate is not None:
            found.append(flags.throughput_flag(rate, best_rate))
        return [f for f in found if f]

    @property
    def cause(self) -> str:
        """One line on why the latest run failed (crash, timeout, aborted, rejected)."""
        r = self.runs[-1]
        if r.error:
            kind, msg = str(r.error.get("type", "")).strip(), str(r.error.get("message", "")).strip()
            line = f"{kind}: {msg}" if kind and msg else kind or msg
            if line:
                return one_line(line)
        return one_line(r.reason or r.status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit, "branch": self.branch, "status": self.status, "kind": self.kind,
            "val_bpb": _round(self.val_bpb), "delta": _round(self.delta), "best_before": _round(self.best_before),
            "runs": len(self.values), "memory_gb": _round(self.memory_gb, 3),
            "training_seconds": _round(self.training_seconds, 3), "num_steps": self.num_steps,
            "tokens_per_s": _round(self.tokens_per_s, 1), "flags": self.flags, "description": self.description,
            "hypothesis": self.hypothesis, "started": self.first.started,
            "cause": self.cause if self.status in (*FAILED, REJECTED) else None,
            "lessons": [lesson.lesson for lesson in self.lessons],
            "agent_sha256": self.content, "repeat_of": self.repeat_of,
        }


@dataclass(frozen=True)
class History:
    """The attempts of a branch. Time order is computed only when asked for (`attempts`, `when`):

    a record without a start time (hand-made, or from an older writer) is placed by its
    commit's date, and reading 10,000 commits costs more than every other step.
    """

    git: Git
    branch: str | None  # None: every branch (--all)
    unordered: list[Attempt]  # in notes order
    tip: str | None  # the branch's judged tip (state.judged_tip; single-branch histories)
    lineage: list[Attempt] = field(default_factory=list)  # kept attempts on the branch, oldest first
    _commit_times: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def when(self, a: Attempt) -> float:
        """When the attempt started: its record's start time, else its commit's date."""
        if a.started is not None:
            return a.started
        t = self._commit_times.get(a.commit)
        if t is None:
            t = self._commit_times[a.commit] = _commit_time(self.git, a.commit)
        return t

    @functools.cached_property
    def attempts(self) -> list[Attempt]:
        """Oldest first; ties (same second) by branch, then commit, so the order is stable."""
        if all(a.started is not None for a in self.unordered):
            # Every record has its start: three stable sorts on one plain key each (the last decides,
            # the earlier ones break its ties) compare floats and strings directly, not tuples.
            ordered = sorted(self.unordered, key=operator.attrgetter("commit"))
            ordered.sort(key=operator.attrgetter("branch"))
            ordered.sort(key=operator.attrgetter("started"))
            return ordered
        return sorted(self.unordered, key=lambda a: (self.when(a), a.branch, a.commit))

    @functools.cached_property
    def best(self) -> Attempt | None:
        """The judge's best: the branch tip, when it was kept on this branch."""
        if self.tip is None:
            return None
        for a in self.unordered:
            if a.commit == self.tip:
                return a if a.status == KEEP and a.values else None
        return None

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (KEEP, DISCARD, CRASH, TIMEOUT, ABORTED, REJECTED)}
        for a in self.unordered:
            out[a.status] = out.get(a.status, 0) + 1
        return out

    @functools.cached_property
    def noise(self) -> Noise | None:
        """The branch's run-to-run noise, pooled exactly as the judge pools it (gitar/review/noise.py)."""
        if self.branch is None:
            return None
        return noise_from(((a.commit, a.runs) for a in self.unordered), self.branch)


_NOT_RUN = frozenset((*FAILED, REJECTED))  # attempts whose row says why they have no number


def attempt_line(a: Attempt) -> str:
    """A row of `gitar log` without its sha: status, val_bpb, delta, memory, seconds, steps, tokens/s,
    description with its flags.

    Also each attempt's line in git's own tools (gitar/review/summary.py), so both say the same.
    Not escaped: `gitar log` escapes its whole output, the summary its whole note.
    """
    value = "-" if a.val_bpb is None else numbers.bpb(a.val_bpb)
    delta = numbers.signed(a.delta) if a.delta is not None else "baseline" if a.is_baseline else "-"
    mem = "-" if a.memory_gb is None else f"{a.memory_gb:.1f}"
    secs = "-" if a.training_seconds is None else f"{a.training_seconds:.1f}"
    steps = a.num_steps
    rate = a.tokens_per_s
    desc = one_line(a.runs[0].description, 72)
    if len(a.values) > 1:
        desc += f" [mean of {len(a.values)} runs]"
    if a.status in _NOT_RUN:
        desc += f" — {one_line(a.cause, 80)}"
    for flag in a.flags_at(rate):
        desc += f" [{flag.partition(':')[0]}]"  # the flag's head; the result line and `show` say why
    if (earlier := a.repeat_of) is not None:
        desc += f" [repeat of {earlier[:7]}]"  # the same files as that attempt (gitar/loop/repeats.py)
    return (f"{a.status:<8} {value:>8}  {delta:>9}  {mem:>6}  {secs:>7}  "
            f"{'-' if steps is None else steps:>6}  {'-' if rate is None else numbers.per_second(rate):>6}  {desc}")


def tsv_status(status: str) -> str | None:
    """autoresearch's status for a gitar status; None: not a row (the attempt never ran)."""
    if status in (KEEP, DISCARD):
        return status
    if status in FAILED:
        return "crash"
    return None


def tsv_fields(a: Attempt) -> tuple[str, str, str, str] | None:
    """The attempt's results.tsv row after its commit: val_bpb, memory_gb, status, description; None if it never ran."""
    status = tsv_status(a.status)
    if status is None:
        return None
    crashed = status == "crash" or a.val_bpb is None
    value = "0.000000" if crashed or a.val_bpb is None else numbers.bpb(a.val_bpb)
    mem = "0.0" if crashed or a.memory_gb is None else f"{a.memory_gb:.1f}"
    # Tabs and line breaks would split the row: every run of whitespace becomes one space, and
    # what else a terminal or a spreadsheet would act on is escaped (safe()).
    return value, mem, "crash" if crashed else status, safe(" ".join(a.first.description.split()))


def one_line(text: str, limit: int = 160) -> str:
    """Whitespace (tabs, newlines, any Unicode line break) collapsed, then clipped."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def load(git: Git, branch: str | None) -> History:
    """The attempts of `branch` (every branch when None), from one pass over the notes."""
    attempts: list[Attempt] = []
    with _no_collection():
        for commit, records, lessons, derived in notes_cache.entries(git, derive):
            try:
                attempts.extend(_from_derived(commit, records, lessons, derived, branch))
            except (TypeError, ValueError, IndexError):  # not what derive() makes: computed afresh
                attempts.extend(_attempts_of(commit, records, lessons, branch))
    # While an attempt runs, the branch sits on it unjudged: the best is the one it is judged against.
    tip = None
    if branch is not None:
        tip = state.judged_tip(Paths.of(git), branch, git.ref_target(branch_ref(branch)))
    lineage = _lineage(git, attempts, tip) if branch is not None else []
    return History(git=git, branch=branch, unordered=attempts, tip=tip, lineage=lineage)


def _attempts_of(commit: str, records: list[Record], lessons: list[Lesson], branch: str | None) -> list[Attempt]:
    if len(records) == 1 and not lessons:  # nearly every note: one run, nothing learned yet
        r = records[0]
        return [attempt(commit, r.branch, (r,), (), _started(r))] if branch is None or r.branch == branch else []
    return [attempt(commit, name, tuple(runs), tuple(lessons), _started(runs[0]))
            for name, runs in group_runs(list(records), branch)]


def derive(commit: str, records: list[Record], lessons: list[Lesson]) -> list[tuple[Any, ...]]:
    """What attempt() and attempt_line() make of one note, per branch, kept by the notes cache.

    Both depend on the note alone, so they are computed when the note is first parsed and
    read back with it (gitar/store/notes_cache.py): one tuple per branch, naming its runs by their
    place in the note. The cache is invalidated when this module's source changes.
    """
    place = {id(r): i for i, r in enumerate(records)}
    out = []
    for a in _attempts_of(commit, records, lessons, None):
        out.append((a.branch, tuple(place[id(r)] for r in a.runs), a.started, a.status, a.values, a.val_bpb,
                    a.delta, a.memory_gb, a.training_seconds, a.line, a.tsv))
    return out


def _from_derived(commit: str, records: list[Record], lessons: list[Lesson], derived: Any,
                  branch: str | None) -> list[Attempt]:
    """The attempts derive() described; TypeError, ValueError or IndexError if `derived` is not its
    shape (its values are trusted as the cache is: gitar/store/notes_cache.py)."""
    out = []
    kept_lessons = tuple(lessons)
    for name, places, started, status, values, val_bpb, delta, memory_gb, seconds, line, tsv in derived:
        if branch is not None and name != branch:
            continue
        runs = tuple(records[i] for i in places)
        if not runs:
            raise ValueError("an attempt without runs")
        a = _new_attempt(commit, name, runs, kept_lessons, started, status, values, val_bpb, delta, memory_gb, seconds)
        a.__dict__["line"] = line  # Attempt.line and .tsv, computed when the note was cached
        a.__dict__["tsv"] = tsv
        out.append(a)
    return out


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No cyclic garbage collection while the notebook is read.

    Reading 10,000 notes allocates some 100,000 dicts, lists and records, none of them in a
    reference cycle: each collection the allocations trigger walks every object read so far
    and frees nothing. Reference counting still frees everything. On the way out the objects
    go straight to the oldest generation (freeze, then unfreeze, moves them there and resets
    the count of new ones), where collections would move them anyway, instead of being walked
    once more by the collection that re-enabling would start.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()


def attempt(commit: str, branch: str, runs: tuple[Record, ...], lessons: tuple[Lesson, ...] = (),
            started: float | None = None) -> Attempt:
    first = runs[0]
    judged = first.kind not in ("baseline", "rerun")
    if len(runs) == 1:  # nearly every attempt: the same numbers as below without the lists
        v = first.val_bpb
        ok = v is not None and first.ok
        one: tuple[float, ...] = (v,) if ok and v is not None else ()
        mean = float(v) if ok and v is not None else None
        peak = first.peak_vram_mb if ok else None
        secs = first.training_seconds
        delta = _delta(mean, first.best_before) if judged else None
        return _new_attempt(commit, branch, runs, lessons, started, first.status, one, mean, delta,
                            None if peak is None else peak / 1024, None if secs is None else float(secs))
    if any(r.status == KEEP for r in runs):
        status = KEEP
    else:
        decided = [r.status for r in runs if r.status != UNDECIDED]
        status = decided[-1] if decided else UNDECIDED
    ok_runs = [r for r in runs if r.ok]
    values = tuple(r.val_bpb for r in ok_runs if r.val_bpb is not None)
    mean = sum(values) / len(values) if values else None
    delta = _delta(mean, first.best_before) if judged else None
    peaks = [r.peak_vram_mb for r in ok_runs if r.peak_vram_mb is not None]
    secs_list = [r.training_seconds for r in ok_runs if r.training_seconds is not None]
    if not secs_list:
        secs_list = [r.training_seconds for r in runs if r.training_seconds is not None]
    return _new_attempt(commit, branch, runs, lessons, started, status, values, mean, delta,
                        max(peaks) / 1024 if peaks else None, sum(secs_list) / len(secs_list) if secs_list else None)


def _new_attempt(commit: str, branch: str, runs: tuple[Record, ...], lessons: tuple[Lesson, ...],
                 started: float | None, status: str, values: tuple[float, ...], val_bpb: float | None,
                 delta: float | None, memory_gb: float | None, training_seconds: float | None) -> Attempt:
    """Attempt(...) without its generated __init__, which sets each field of a frozen dataclass
    through object.__setattr__, at nearly three times the cost of one dict of the same fields
    (10,000 attempts per review command). tests/review checks that every field is here."""
    a = object.__new__(Attempt)
    a.__dict__.update({
        "commit": commit, "branch": branch, "runs": runs, "lessons": lessons, "started": started, "status": status,
        "values": values, "val_bpb": val_bpb, "delta": delta, "memory_gb": memory_gb,
        "training_seconds": training_seconds})
    return a


def group_runs(records: list[Record], branch: str | None = None) -> list[tuple[str, list[Record]]]:
    """The runs of one note by branch (only `branch`'s when given), each branch's in the order they ran."""
    groups = _by_branch(records, branch)
    for _, runs in groups:
        if len(runs) > 1:
            runs.sort(key=_run_order)  # a merged note (cat_sort_uniq) holds its lines sorted, not in time order
    return groups


def _by_branch(records: list[Record], branch: str | None) -> list[tuple[str, list[Record]]]:
    """The records of one note grouped by branch (only `branch`'s when given)."""
    if len(records) == 1:  # the common case, 10,000 times: no grouping needed
        r = records[0]
        return [(r.branch, records)] if branch is None or r.branch == branch else []
    groups: dict[str, list[Record]] = {}
    for r in records:
        if branch is None or r.branch == branch:
            groups.setdefault(r.branch, []).append(r)
    return list(groups.items())


def _run_order(r: Record) -> str:
    # Ties (runs within one second) keep the note's line order: the sort is stable.
    return r.started or r.ended or ""


def _started(r: Record) -> float | None:
    for stamp in (r.started, r.ended):
        if stamp:
            try:
                return dt.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                continue
    return None


def _commit_time(git: Git, sha: str) -> float:
    t = git.commit_time(sha)
    return 0.0 if t is None else float(t)


def _lineage(git: Git, attempts: list[Attempt], tip: str | None) -> list[Attempt]:
    """The kept attempts on the branch's first-parent chain, oldest first.

    The walk stops once every kept commit of the branch is found, so its cost is the
    length of the branch's own experiments, not of the project history beneath them.
    """
    kept = {a.commit: a for a in attempts if a.status == KEEP}
    if tip is None or not kept:
        return []
    found: list[Attempt] = []
    for commit in git.first_parents(tip):
        attempt = kept.get(commit)
        if attempt is not None:
            found.append(attempt)
            if len(found) == len(kept):
                break
    found.reverse()
    return found


def _delta(value: float | None, best: float | None) -> float | None:
    return None if value is None or best is None else numbers.delta(value, best)


def _round(v: float | None, digits: int | None = None) -> float | None:
    """val_bpb and deltas as every command prints them (numbers.rounded); other figures to `digits`."""
    if v is None:
        return None
    return numbers.rounded(v) if digits is None else round(v, digits)
