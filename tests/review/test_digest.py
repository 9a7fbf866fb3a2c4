"""The pure parts of the review commands: the TSV mapping, grouping, the size bound; and a long history."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import re

import pandas as pd
import pytest

from gitar.commands.log import tsv_text
from gitar.commands.memory import _NUMBER, Section, fit, normalise
from gitar.review.history import Attempt, attempt, tsv_status
from gitar.store.records import Lesson, Record, parse_lines
from testing.history import synthesise_history
from testing.workspace import Workspace


def _attempt(i: int, status: str, val_bpb: float | None = None, description: str = "idea") -> Attempt:
    rec = Record(status=status, commit=f"{i:07x}" + "0" * 33, branch="autoresearch/t1", description=description,
                 run_id=f"r{i}", val_bpb=val_bpb, best_before=1.0, peak_vram_mb=2048.0 if val_bpb else None)
    return attempt(rec.commit, rec.branch, (rec,), (), float(i))


def test_tsv_maps_six_statuses_onto_three() -> None:
    assert [tsv_status(s) for s in ("keep", "discard", "crash", "timeout", "aborted", "rejected", "undecided")] == \
        ["keep", "discard", "crash", "crash", "crash", None, None]
    attempts = [_attempt(1, "keep", 0.99), _attempt(2, "timeout"), _attempt(3, "aborted"), _attempt(4, "rejected"),
                _attempt(5, "discard", 1.01)]
    rows = tsv_text(attempts).splitlines()
    assert rows[1:] == [f"{1:07x}\t0.990000\t2.0\tkeep\tidea", f"{2:07x}\t0.000000\t0.0\tcrash\tidea",
                        f"{3:07x}\t0.000000\t0.0\tcrash\tidea", f"{5:07x}\t1.010000\t2.0\tdiscard\tidea"]


def test_tsv_descriptions_never_break_rows() -> None:
    nasty = ['"quoted" start', "tab\there", "new\nline\r\nand\rreturn", "unicode\u2028separator\x0bvt",
             'unbalanced " quote', "   padded   "]
    text = tsv_text([_attempt(i, "discard", 1.0, d) for i, d in enumerate(nasty)])
    df = pd.read_csv(io.StringIO(text), sep="\t")
    assert len(df) == len(nasty) and list(df.columns) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert list(df["description"]) == [" ".join(d.split()) for d in nasty]
    assert [row[4] for row in csv.reader(io.StringIO(text), delimiter="\t")][1:] == list(df["description"])


def test_normalise_groups_the_same_idea() -> None:
    assert normalise("Increase LR to 0.04") == normalise("increase lr to 0.05") == normalise("LR increase: 1e-3")
    assert normalise("wider MLP") == normalise("MLP, wider")
    assert normalise("wider MLP") != normalise("narrower MLP")


def test_fit_never_exceeds_the_bound_and_says_what_it_cut() -> None:
    sections = [Section("summary", ["a" * 50] * 3), Section("kept", [f"kept {i} " + "k" * 40 for i in range(200)],
                keep_tail=True), Section("discarded", [f"d {i} " + "d" * 60 for i in range(500)])]
    for limit in range(300, 20_000, 457):
        lines = fit(sections, limit)
        text = "\n".join(lines)
        assert len(text) <= limit
        assert lines[0] == "summary"
    lines = fit(sections, 3000)
    assert any(ln.startswith("… ") and ln.endswith("earlier") for ln in lines)  # the kept tail: newest kept
    assert "kept 199 " + "k" * 40 in lines and "kept 0 " + "k" * 40 not in lines
    assert lines[-1].startswith("… ") and lines[-1].endswith("more")
    everything = fit(sections, 10**6)
    assert len(everything) == 3 + 3 + 200 + 500 and not any(ln.startswith("… ") for ln in everything)


def test_lesson_lines_are_not_runs_and_bad_lines_are_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    run = Record(status="keep", commit="c" * 40, branch="b", description="d", run_id="r", val_bpb=1.0)
    note = "\n".join([run.to_line(), Lesson("c" * 40, "it works", "b", "2026-01-01T00:00:00+00:00").to_line(),
                      '{"status": "lesson", "commit": "' + "c" * 40 + '"}', '{"status": "keep", "commit": 7}',
                      '{"status": "keep", "commit": "x", "branch": "b", "description": "d", "run_id": "r", '
                      '"val_bpb": "low"}', "not json"])
    records, lessons = parse_lines(note, "c" * 40)
    assert [r.run_id for r in records] == ["r"] and [x.lesson for x in lessons] == ["it works"]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 4 and all(w.startswith("gitar: warning: skipping line") for w in warnings)
    parse_lines(note, "c" * 40)  # the same note read again in one process: no second warning
    assert capsys.readouterr().err == ""


def test_long_history_memory_bound_stable_and_log_in_time_order(workspace: Workspace) -> None:
    ws = workspace
    synthesise_history(ws, 300)  # records without start times: ordered by their commits' dates
    for limit in (400, 1000, 6000):
        out = ws.gitar("memory", "--max-chars", str(limit))
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.rstrip("\n")) <= limit
    short = ws.gitar("memory", "--max-chars", "1000").stdout
    assert "… " in short and "attempt 290" in short  # cut, but the newest kept is there
    first = ws.gitar("memory").stdout
    assert first == ws.gitar("memory").stdout
    assert "attempts 300: 30 kept, 270 discarded" in first
    assert all(f'"attempt {i}"' in first for i in range(0, 300, 10))  # every kept experiment, within 6000
    objs = [json.loads(ln) for ln in ws.gitar("log", "--json").stdout.splitlines()]
    assert [o["description"] for o in objs[:3]] == ["attempt 299", "attempt 298", "attempt 297"]
    assert len(objs) == 300
    best = json.loads(ws.gitar("best", "--json").stdout)
    assert best["best"]["description"] == "attempt 290" and best["kept"] == 30


def test_a_parsed_record_equals_the_one_written() -> None:
    rec = Record(status="discard", commit="c" * 40, branch="b", description="d", run_id="r", val_bpb=1.5,
                 platform={"device": "cpu"}, error=None, extra={"written_by": "a newer gitar"})
    [back] = parse_lines(rec.to_line(), "c" * 40)[0]
    assert back == rec and back.extra == {"written_by": "a newer gitar"}
    assert back.kind == "attempt" and back.seed is None  # defaults filled as __init__ fills them


def test_a_record_with_unicode_line_separators_reads_back() -> None:
    # json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 raw inside strings: a note is
    # split into lines at newlines only (as git merges notes), or such a record would be lost.
    rec = Record(status="keep", commit="c" * 40, branch="b", description="a\u2028b\u2029c\x85d", run_id="r",
                 val_bpb=1.0, hypothesis="why\u2028not")
    lesson = Lesson("c" * 40, "learned\u2029this")
    records, lessons = parse_lines(rec.to_line() + "\n" + lesson.to_line() + "\r\n", "c" * 40)
    assert records == [rec] and lessons == [lesson]


def test_attempt_built_without_init_has_every_field() -> None:
    # attempt() fills the frozen dataclass's fields in one dict: a field added to Attempt and not
    # there would be missing from every attempt read from the notes.
    one = _attempt(1, "keep", 0.99)
    rec = one.runs[0]
    two = attempt(rec.commit, rec.branch, (rec, rec), (), 1.0)
    for a in (one, two):
        assert set(vars(a)) == {f.name for f in dataclasses.fields(Attempt)}
        assert Attempt(**vars(a)) == a
    assert (one.values, one.val_bpb, one.memory_gb) == ((0.99,), 0.99, 2.0) and two.values == (0.99, 0.99)


def test_the_number_pattern_matches_its_plain_form() -> None:
    # memory._NUMBER is written to begin with a character class (for speed); it must replace exactly
    # what the plain pattern replaces.
    plain = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")
    rnd = random.Random(0)
    alphabet = "0123456789.-+e ax_#٣²"
    for _ in range(20_000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        assert _NUMBER.sub(" # ", text) == plain.sub(" # ", text), text
    # Non-ASCII descriptions take the regex path, ASCII ones the byte translation: the same words.
    assert normalise("naïve Über-change 3e-4, x_y") == " ".join(sorted({"#", "naïve", "über", "change", "x_y"}))
    assert normalise("naive Uber-change 3e-4, x_y") == " ".join(sorted({"#", "naive", "uber", "change", "x_y"}))


def test_a_mean_has_one_spelling_whatever_order_its_runs_were_summed_in() -> None:
    import math
    import random

    from gitar.numbers import bpb, delta, rounded, signed

    rng = random.Random(1)
    for _ in range(5000):
        runs = [round(rng.uniform(0.9, 3.0), 6) for _ in range(rng.randint(2, 5))]
        running = runs[0]  # the judge's mean, updated run by run
        for k, v in enumerate(runs[1:], start=1):
            running = (running * k + v) / (k + 1)
        means = (sum(runs) / len(runs), math.fsum(runs) / len(runs), running)
        assert len({bpb(m) for m in means}) == 1 and len({rounded(m) for m in means}) == 1, runs
        assert float(bpb(means[0])) == rounded(means[0])
    assert signed(delta(1.6, 1.5150155)) == "+0.084984" and signed(-1e-12) == "+0.000000"


def _run(i: int, status: str, content: str | None, *, branch: str = "autoresearch/t1", commit: str | None = None,
         val_bpb: float | None = None, kind: str = "attempt", harness: str = "h1", description: str = "idea",
         reason: str | None = None) -> Attempt:
    rec = Record(status=status, commit=commit or f"{i:07x}" + "0" * 33, branch=branch, description=description,
                 run_id=f"r{i}-{branch}", val_bpb=val_bpb, best_before=1.0, kind=kind, agent_sha256=content,
                 harness_sha256=harness, reason=reason)
    return attempt(rec.commit, rec.branch, (rec,), (), float(i))


def test_memory_lists_repeats_by_content_and_the_ideas_the_smoke_step_refused() -> None:
    from gitar.commands.memory import render
    from gitar.review.history import History

    same = "a" * 64
    attempts = [
        _run(1, "discard", same, val_bpb=1.1, description="wider MLP"),
        _run(2, "discard", same, val_bpb=1.1, description="bigger hidden layer"),  # new words, same files
        _run(3, "crash", same, description="MLP 5x"),
        _run(4, "discard", "b" * 64, val_bpb=1.2, description="wider MLP"),  # same words, other files: no repeat
        _run(5, "discard", same, val_bpb=1.1, harness="h2", description="another harness"),  # another experiment
        _run(6, "keep", "c" * 64, commit="f" * 40, val_bpb=0.9),  # one commit on two branches: no repeat
        _run(7, "keep", "c" * 64, commit="f" * 40, val_bpb=0.9, branch="autoresearch/t2"),
        _run(8, "rejected", "d" * 64, kind="smoke", description="shape bug",
             reason="smoke step failed: train.py:249 in forward: RuntimeError: mat1 and mat2 shapes"),
        _run(9, "discard", None, val_bpb=1.3, description="recorded before the identity"),
    ]
    h = History(git=None, branch=None, unordered=attempts, tip=None)  # type: ignore[arg-type]  # never read
    lines = render(h, 6000).splitlines()
    title = next(i for i, ln in enumerate(lines) if ln.startswith("repeats by content"))
    assert lines[title].endswith("(2); the first result stands, try something else")
    assert lines[title + 1] == (f'3× {1:07x} discard 1.100000 "wider MLP" — again as {2:07x} discard 1.100000 '
                                f'"bigger hidden layer", {3:07x} crash "MLP 5x"')
    assert not lines[title + 2].startswith(("2×", "3×"))  # one group only
    smoke = next(i for i, ln in enumerate(lines) if ln.startswith("refused by the smoke step"))
    assert lines[smoke].startswith("refused by the smoke step (1;")
    assert lines[smoke + 1] == f'{8:07x} "shape bug": train.py:249 in forward: RuntimeError: mat1 and mat2 shapes'
    assert "1 rejected (never ran; 1 by the smoke step)" in lines[1]
    # Nothing to list: the sections stay out of the digest.
    plain = render(History(git=None, branch=None, unordered=attempts[3:7], tip=None), 6000)  # type: ignore[arg-type]
    assert "repeats by content" not in plain and "refused by the smoke step" not in plain
