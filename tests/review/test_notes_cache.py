"""The review commands' cache of parsed notes: the same output whatever the cache holds, and a
warm cache parses nothing (what makes `gitar log` on 10,000 attempts close to git's own speed)."""

from __future__ import annotations

import dataclasses
import marshal
import subprocess
from pathlib import Path

import pytest

from gitar.review import history, summary
from gitar.store import notes_cache, records
from gitar.store.git import Git
from gitar.store.records import NOTES_REF, Notebook
from testing.history import Built

COMMANDS = (("log",), ("log", "--json"), ("log", "--tsv"), ("log", "--all"), ("memory",), ("best",), ("best", "--json"))


def _cache(review: Built) -> Path:
    return review.ws.root / ".git" / "gitar" / "cache" / "notes.marshal"


def _outputs(review: Built) -> list[tuple[int, str, str]]:
    out = []
    for args in COMMANDS:
        proc: subprocess.CompletedProcess[str] = review.ws.gitar(*args)
        out.append((proc.returncode, proc.stdout, proc.stderr))
    return out


def test_every_review_command_says_the_same_cold_warm_and_with_a_damaged_cache(review: Built) -> None:
    _cache(review).unlink(missing_ok=True)
    cold = _outputs(review)  # no cache: every note parsed, the cache written
    assert _cache(review).exists()
    assert _outputs(review) == cold  # from the cache
    assert all(code == 0 for code, _, _ in cold)
    for damage in (b"not marshal at all", b"", marshal.dumps(("gitar-notes-cache", 999)),
                   marshal.dumps((notes_cache.FORMAT, "0" * 40, "not a listing"))):
        _cache(review).write_bytes(damage)
        assert _outputs(review) == cold, damage[:40]
    # the current tree's cache, cut short or reshaped: read as if there were none, then rewritten
    loaded = notes_cache._load(_cache(review))
    assert loaded is not None
    tree, listing = loaded
    for shape in ([(a, b, ([*items[:1], ("x",)], derived)) for a, b, (items, derived) in listing],
                  [(a, b, (items, [d[:3] for d in derived])) for a, b, (items, derived) in listing],
                  [(a, b, (items, [(d[0], (99,), *d[2:]) for d in derived])) for a, b, (items, derived) in listing]):
        _cache(review).write_bytes(marshal.dumps((notes_cache.FORMAT, tree, shape)))
        assert _outputs(review) == cold


def test_a_warm_cache_parses_no_note_and_a_new_record_only_its_own(review: Built,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    git = Git.discover(review.ws.root)
    expected = history.load(git, "autoresearch/t1")
    parsed: list[str] = []
    real = records.parse_line

    def counting(line: str) -> records.Record | records.Lesson:
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(records, "parse_line", counting)
    monkeypatch.setattr(notes_cache, "parse_line", counting)
    warm = history.load(git, "autoresearch/t1")
    assert parsed == []  # nothing parsed: every note came from the cache
    assert [(a.commit, a.status, a.val_bpb, a.delta, a.values, a.line) for a in warm.attempts] == \
        [(a.commit, a.status, a.val_bpb, a.delta, a.values, history.attempt_line(a)) for a in expected.attempts]
    monkeypatch.setattr(records, "parse_line", real)
    summary.writer(git).add_lesson(records.Lesson(commit=review.lr04, lesson="too high"))
    monkeypatch.setattr(records, "parse_line", counting)
    again = history.load(git, "autoresearch/t1")
    assert len(parsed) == 2  # the one note that changed: its record and its new lesson
    assert [x.lesson for a in again.attempts if a.commit == review.lr04 for x in a.lessons] == ["too high"]


def test_a_cached_record_reads_as_the_record_itself(review: Built) -> None:
    git = Git.discover(review.ws.root)
    list(notes_cache.entries(git, history.derive))  # the cache is written
    cached = {c: (rs, ls) for c, rs, ls, _ in notes_cache.entries(git, history.derive)}
    direct = {c: (rs, ls) for c, rs, ls in Notebook(git).entries()}
    assert cached.keys() == direct.keys()
    for commit, (rs, ls) in direct.items():
        got, got_lessons = cached[commit]
        assert all(isinstance(r, notes_cache.PartialRecord) for r in got)
        # every field, the ones the cache holds and the ones read from the line on first use
        assert [dataclasses.asdict(r) for r in got] == [dataclasses.asdict(r) for r in rs]
        assert [r.to_line() for r in got] == [r.to_line() for r in rs] and got_lessons == ls
    record = cached[review.rotary][0][0]
    record.harness_sha256 = "set by hand"  # a field set before it was read from the line stays as set
    assert record.harness_sha256 == "set by hand" and record.host == direct[review.rotary][0][0].host


def test_a_bad_line_warns_on_every_call(review: Built) -> None:
    ws = review.ws
    ws.git("notes", "--ref", NOTES_REF, "append", "-m", "not json", review.lr04)
    for _ in range(2):  # the second call has a cache: that note is not in it
        proc = ws.gitar("log")
        assert proc.returncode == 0
        warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
        assert len(warnings) == 1 and review.lr04[:12] in warnings[0]
