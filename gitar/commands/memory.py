"""`gitar memory`: the digest an agent reads before each hypothesis.

What helped (the lineage of kept improvements), what did not (discards grouped so
that repeated ideas stand out), what broke and why, what the smoke step refused, what
nearly worked, what was learned, and how large a difference the noise alone makes.
Repeats by content (the same train.py and model.json under another description,
gitar/loop/repeats.py) are listed on their own: the description cannot hide them. Everything comes from the
records in git; nothing depends on the time of the call, so two calls on the same
history print the same text, and the text never exceeds --max-chars: sections come in
priority order, each cut with "… N more" when space runs out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, overload

from gitar.commands.best import noise_phrase
from gitar.errors import GitarError
from gitar.loop.workspace import open_workspace
from gitar.numbers import bpb, delta, signed
from gitar.review import history
from gitar.review.history import FAILED, Attempt, History
from gitar.store.records import DISCARD, KEEP, REJECTED, SMOKE
from gitar.text import safe

DEFAULT_MAX_CHARS = 6000
MIN_MAX_CHARS = 300  # room for the summary lines at least
PASSES = (8, 20, None)  # lines per section in each pass: every section gets 8 before any gets more
NEAR_MISS_RELATIVE = 0.001  # without measured noise: a discard within 0.1% of the best it faced
NEAR_MISS_NOISE_FACTOR = 2.0  # with measured noise: within 2 std
DESC_CHARS = 70
WHY_CHARS = 90

_STOPWORDS = frozenset(("a", "an", "the", "to", "of", "and", "with", "in", "on", "for", "by", "from", "at", "into", "as"))
# A number: [-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?, written to begin with a character class
# (what its first character is decides which form may follow): the regex engine then skips
# to the characters that can begin a number instead of trying a match at every position,
# a third of the time over 10,000 descriptions. tests/review checks the two forms agree.
_NUMBER = re.compile(r"[-+.\d](?:(?<=[-+])(?:\d+\.?\d*|\.\d+)|(?<=\.)\d+|(?<=\d)\d*\.?\d*)(?:e[-+]?\d+)?")
_WORD = re.compile(r"[\w#]+")
# For ASCII text (nearly every description) \w is [A-Za-z0-9_]: one byte translation to spaces
# and a split find the same words as _WORD, and bytes sort as their characters do.
_ASCII_NON_WORD = bytes(c if chr(c).isalnum() or chr(c) in "_#" else ord(" ") for c in range(256))
_ASCII_STOPWORDS = frozenset(w.encode() for w in _STOPWORDS)


T = TypeVar("T")


class Lines(Sequence[str], Generic[T]):
    """A section's lines, each written only when asked for.

    A section of 10,000 discards shows a few dozen of them within --max-chars: fit() needs
    the count of the lines and the few it shows, so only those are formatted.
    """

    def __init__(self, items: Sequence[T], line: Callable[[T], str]) -> None:
        self._items = items
        self._line = line
        self._done: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        text = self._done.get(i)
        if text is None:
            text = self._done[i] = self._line(self._items[i])
        return text


@dataclass(frozen=True)
class Section:
    title: str
    lines: Sequence[str]
    keep_tail: bool = False  # when cut, keep the last lines (the most recent) rather than the first


def normalise(description: str) -> str:
    """The key that groups near-identical descriptions: case, punctuation, numbers, word order ignored.

    "Increase LR to 0.04" and "increase lr to 0.05" share a key, so trying the same idea
    with another number shows up as a repeat.
    """
    text = _NUMBER.sub(" # ", description.lower())
    if text.isascii():
        words = set(text.encode().translate(_ASCII_NON_WORD).split()) - _ASCII_STOPWORDS
        return b" ".join(sorted(words)).decode()
    return " ".join(sorted(set(_WORD.findall(text)) - _STOPWORDS))


def build_memory(max_chars: int = DEFAULT_MAX_CHARS, start: str | Path = ".", *, all_branches: bool = False) -> str:
    if max_chars < MIN_MAX_CHARS:
        raise GitarError(f"--max-chars must be at least {MIN_MAX_CHARS}, got {max_chars}")
    ws = open_workspace(start, need_experiment_branch=not all_branches)
    if not all_branches:
        return render(history.load(ws.git, ws.branch), max_chars)
    mine = history.load(ws.git, ws.branch) if ws.ground.experiment.is_experiment_branch(ws.branch) else None
    return "\n".join(fit(sections_all(history.load(ws.git, None), mine), max_chars))


def sections_all(every: History, mine: History | None) -> list[Section]:
    """`--all`: this branch's best and lineage (when on one), and what every agent tried.

    Lessons, near misses, discards and failures come from every branch, so an idea another
    agent already tried shows up as a repeat here too.
    """
    discards = sorted((a for a in every.unordered if a.status == DISCARD), key=_delta_key)
    branches = sorted({a.branch for a in every.unordered})
    shared = f"all {len(branches)} branches: {len(every.unordered)} attempts; `gitar best --all` compares their bests"
    if mine is not None:
        head = _summary(mine)
        summary = Section(f"{head.title} (+ every branch)", [*head.lines, shared], head.keep_tail)
        return [summary, _lineage(mine), _lessons(every), _repeats(every), _near_misses(mine, discards),
                _discarded(discards), _failed(every), _smoke_refused(every)]
    c = every.counts
    lines = [shared, f"{c[KEEP]} kept, {c[DISCARD]} discarded, {c['crash']} crashed, {c['timeout']} timed out"]
    return [Section("gitar memory: every branch", lines), _lessons(every), _repeats(every),
            _near_misses(every, discards), _discarded(discards), _failed(every), _smoke_refused(every)]


def render(h: History, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    return "\n".join(fit(sections(h), max_chars))


def sections(h: History) -> list[Section]:
    """Every section, most useful first."""
    discards = sorted((a for a in h.unordered if a.status == DISCARD), key=_delta_key)  # closest first
    return [_summary(h), _lineage(h), _lessons(h), _repeats(h), _near_misses(h, discards), _discarded(discards),
            _failed(h), _smoke_refused(h)]


def _q(text: str, limit: int = DESC_CHARS) -> str:
    return '"' + history.one_line(text, limit) + '"'


def _summary(h: History) -> Section:
    c = h.counts
    ran = [f"{c[KEEP]} kept", f"{c[DISCARD]} discarded", f"{c['crash']} crashed", f"{c['timeout']} timed out"]
    if c["aborted"]:
        ran.append(f"{c['aborted']} aborted")
    if c[REJECTED]:
        smoke = sum(1 for a in h.unordered if a.kind == SMOKE)
        ran.append(f"{c[REJECTED]} rejected (never ran{f'; {smoke} by the smoke step' if smoke else ''})")
    lines = [f"attempts {len(h.unordered)}: " + ", ".join(ran)]
    best = h.best
    if best is not None and best.val_bpb is not None:
        runs = f" (mean of {len(best.values)} runs)" if len(best.values) > 1 else ""
        line = f"best {best.commit[:7]} val_bpb {bpb(best.val_bpb)}{runs} {_q(best.description)}"
        base = h.lineage[0] if h.lineage else None
        if base is not None and base.val_bpb is not None and base is not best:
            line += f"; baseline {bpb(base.val_bpb)}, {signed(delta(best.val_bpb, base.val_bpb))} in total"
        lines.append(line)
    else:
        lines.append("best: none yet (`gitar run` measures the baseline)")
    noise = h.noise
    if noise is not None:
        lines.append(f"noise (identical runs): {noise_phrase(noise)}; "
                     f"a delta within ±{NEAR_MISS_NOISE_FACTOR * noise.std:.6f} may be noise")
    else:
        lines.append("noise: not measured; `gitar run --repeat 3` on the best measures it")
    return Section(f"gitar memory: {h.branch}", lines)


def _why(a: Attempt) -> str:
    return f" — why: {history.one_line(a.hypothesis, WHY_CHARS)}" if a.hypothesis else ""


def _lineage(h: History) -> Section:
    steps: list[tuple[Attempt, float | None]] = []  # each kept attempt and the value of the one before it
    previous: float | None = None
    for a in h.lineage:
        steps.append((a, previous))
        previous = a.val_bpb if a.val_bpb is not None else previous
    return Section(f"kept, oldest first ({len(steps)}): each improved on the one before", Lines(steps, _kept_line),
                   keep_tail=True)


def _kept_line(step: tuple[Attempt, float | None]) -> str:
    a, previous = step
    value = "-" if a.val_bpb is None else bpb(a.val_bpb)
    # The judge's delta; a record without one is compared with the kept attempt before it.
    d = a.delta if a.delta is not None or a.val_bpb is None or previous is None else delta(a.val_bpb, previous)
    change = "baseline" if previous is None and d is None else "-" if d is None else signed(d)
    runs = f" ×{len(a.values)} runs" if len(a.values) > 1 else ""
    return f"{a.commit[:7]} {value} {change}{runs} {_q(a.description)}{_why(a)}"


def _lessons(h: History) -> Section:
    seen: set[tuple[str, str]] = set()
    entries: list[tuple[float, str, str]] = []
    for a in h.unordered:
        for x in a.lessons:
            if (a.commit, x.lesson) in seen:  # a commit tried on two branches carries its lessons twice
                continue
            seen.add((a.commit, x.lesson))
            line = f"{a.commit[:7]} {a.status} {_q(a.description, 40)}: {history.one_line(x.lesson, 200)}"
            entries.append((h.when(a), x.time or "", line))
    entries.sort(key=lambda e: (e[0], e[1], e[2]), reverse=True)
    return Section(f"lessons, newest first ({len(entries)})", [e[2] for e in entries])


def _near_miss_margin(h: History) -> float:
    noise = h.noise
    if noise is not None and noise.std > 0:
        return NEAR_MISS_NOISE_FACTOR * noise.std
    best = h.best
    scale = best.val_bpb if best is not None and best.val_bpb is not None else 1.0
    return NEAR_MISS_RELATIVE * abs(scale)


def _near_misses(h: History, discards: list[Attempt]) -> Section:
    """discards: the branch's discards, closest first (_delta_key)."""
    margin = _near_miss_margin(h)
    near = [a for a in discards if a.delta is not None and a.delta <= margin and a.val_bpb is not None]
    return Section(f"near misses, worth combining (discards within {margin:.6f} of the best they faced; "
                   f"{len(near)})", Lines(near, _near_line))


def _near_line(a: Attempt) -> str:
    assert a.val_bpb is not None and a.delta is not None  # _near_misses keeps only such discards
    return f"{a.commit[:7]} {bpb(a.val_bpb)} {signed(a.delta)} {_q(a.description)}{_why(a)}"


def _groups(attempts: list[Attempt]) -> list[list[Attempt]]:
    """Attempts grouped by normalised description, each group in the order given."""
    groups: dict[str, list[Attempt]] = {}
    for a in attempts:
        groups.setdefault(normalise(a.description), []).append(a)
    return list(groups.values())


def _delta_key(a: Attempt) -> tuple[float, str]:
    return (a.delta if a.delta is not None else float("inf"), a.commit)


def _discarded(discards: list[Attempt]) -> Section:
    """Each group once, shown by its closest attempt: the one that came nearest to being kept.

    discards: closest first (_delta_key), so every group is too.
    """
    groups = _groups(discards)
    groups.sort(key=lambda g: (-len(g), _delta_key(g[0])))
    total = sum(len(g) for g in groups)
    return Section(f"discarded ({total} in {len(groups)} groups; repeats first, then the closest)",
                   Lines(groups, _discarded_line))


def _discarded_line(g: list[Attempt]) -> str:
    closest = g[0]
    deltas = [a.delta for a in g[:5] if a.delta is not None]  # sorted by delta: the Nones come last
    shown = ", ".join(map(signed, deltas[:4])) + (", …" if len(deltas) > 4 else "")
    count = f"{len(g)}× " if len(g) > 1 else ""
    return f"{count}{closest.commit[:7]} {_q(closest.description)} delta {shown or '-'}{_why(closest)}"


def _latest_groups(h: History, attempts: list[Attempt]) -> tuple[list[list[Attempt]], int]:
    """Attempts grouped as repeats, each group in time order, the largest and latest first; the count."""
    groups = [sorted(g, key=lambda a: (h.when(a), a.commit)) for g in _groups(attempts)]
    groups.sort(key=lambda g: (-len(g), -h.when(g[-1]), g[-1].commit))
    return groups, sum(len(g) for g in groups)


def _failed(h: History) -> Section:
    """Each group once, shown by its latest failure and that one's cause."""
    groups, total = _latest_groups(h, [a for a in h.unordered if a.status in FAILED])
    return Section(f"crashed, timed out or aborted ({total}; `gitar show SHA` has the log)",
                   Lines(groups, _failed_line))


def _failed_line(g: list[Attempt]) -> str:
    latest = g[-1]
    count = f"{len(g)}× " if len(g) > 1 else ""
    return (f"{count}{latest.status} {latest.commit[:7]} {_q(latest.description)}: "
            f"{history.one_line(latest.cause, 120)}")


def _repeats(h: History) -> Section:
    """Attempts whose train.py and model.json equal an earlier attempt's, whatever their descriptions.

    One line per set of identical files tried as more than one commit, the first of them
    with its result and the later ones after it; the most tried first.
    """
    by_content: dict[str, list[Attempt]] = {}
    for a in h.unordered:
        key = a.content
        if key is not None:
            # The harness is part of the experiment: the same files under another one are another.
            by_content.setdefault(f"{key} {a.first.harness_sha256}", []).append(a)
    groups = []
    for g in by_content.values():
        if len({a.commit for a in g}) < 2:  # one commit measured again, or on two branches: no repeat
            continue
        g.sort(key=lambda a: (h.when(a), a.branch, a.commit))
        groups.append(g)
    groups.sort(key=lambda g: (-len(g), -h.when(g[-1]), g[0].commit))
    total = sum(len(g) - 1 for g in groups)
    return Section(f"repeats by content: the same agent-owned files as an earlier attempt, whatever the "
                   f"description ({total}); the first result stands, try something else", Lines(groups, _repeat_line))


def _result_words(a: Attempt) -> str:
    value = f" {bpb(a.val_bpb)}" if a.val_bpb is not None else ""
    return f"{a.status}{value}"


def _repeat_line(g: list[Attempt]) -> str:
    first, later = g[0], g[1:]
    again = ", ".join(f"{a.commit[:7]} {_result_words(a)} {_q(a.description, 40)}" for a in later[:3])
    more = f", … {len(later) - 3} more" if len(later) > 3 else ""
    return (f"{len(g)}× {first.commit[:7]} {_result_words(first)} {_q(first.description, 50)}"
            f" — again as {again}{more}")


def _smoke_refused(h: History) -> Section:
    """Changes the smoke step refused (never on the branch, never run), each group by its latest."""
    groups, total = _latest_groups(h, [a for a in h.unordered if a.kind == SMOKE])
    return Section(f"refused by the smoke step ({total}; never ran: `gitar show SHA` has the diff and the log)",
                   Lines(groups, _smoke_line))


def _smoke_line(g: list[Attempt]) -> str:
    latest = g[-1]
    count = f"{len(g)}× " if len(g) > 1 else ""
    cause = latest.cause.removeprefix("smoke step failed: ")
    return f"{count}{latest.commit[:7]} {_q(latest.description)}: {history.one_line(cause, 140)}"


def _more(n: int, tail: bool) -> str:
    return f"… {n} {'earlier' if tail else 'more'}"


def _chosen(s: Section, k: int) -> Sequence[str]:
    return s.lines[len(s.lines) - k:] if s.keep_tail else s.lines[:k]


def _next_line(s: Section, k: int) -> str:
    """The line that showing k + 1 lines adds."""
    return s.lines[len(s.lines) - k - 1] if s.keep_tail else s.lines[k]


def _overhead(s: Section, k: int) -> int:
    """The title and the "… N more" line of a section showing k of its lines."""
    if k == 0:
        return 0
    more = len(_more(len(s.lines) - k, s.keep_tail)) + 1 if k < len(s.lines) else 0
    return len(s.title) + 1 + more


def fit(all_sections: list[Section], max_chars: int) -> list[str]:
    """The lines to print: at most max_chars characters in all, the most useful kept.

    Passes in priority order, each with a higher cap on lines per section (PASSES):
    so a long first section (hundreds of kept commits) cannot push every other out.
    """
    # Escaped before they are counted (safe(), lazily: only the lines shown are formatted), so a
    # hostile description can neither break a line nor push the digest past max_chars.
    all_sections = [Section(safe(s.title), Lines(s.lines, safe), s.keep_tail) for s in all_sections]
    left = max_chars + 1  # each line costs its length and a newline; the last line has none
    shown = [0] * len(all_sections)
    for cap in PASSES:
        for i, s in enumerate(all_sections):
            limit = len(s.lines) if cap is None else min(cap, len(s.lines))
            while shown[i] < limit:
                k = shown[i]
                extra = len(_next_line(s, k)) + 1 + _overhead(s, k + 1) - _overhead(s, k)
                if extra > left:
                    break
                left -= extra
                shown[i] = k + 1
    out: list[str] = []
    for s, k in zip(all_sections, shown, strict=True):
        if k == 0:
            continue
        out.append(s.title)
        more = _more(len(s.lines) - k, s.keep_tail) if k < len(s.lines) else None
        if more and s.keep_tail:
            out.append(more)
        out += _chosen(s, k)
        if more and not s.keep_tail:
            out.append(more)
    return out
