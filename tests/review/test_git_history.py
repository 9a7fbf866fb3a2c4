"""The history in git's own tools: `git attempts` and plain `git log` (refs/notes/gitar-summary)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from gitar.store.refs import SUMMARY_REF
from testing.history import Built
from testing.workspace import make_workspace


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _attempt_lines(review: Built) -> list[str]:
    # A blank line follows each attempt (git ends every note with a newline); nothing else is blank.
    return [ln for ln in _ok(review.ws.git("attempts")).splitlines() if ln.strip()]


def _log_rows(review: Built) -> list[str]:
    return _ok(review.ws.gitar("log")).splitlines()[1:]


def test_git_attempts_shows_every_attempt_as_gitar_log_does(review: Built) -> None:
    ws = review.ws
    # The crash's record was rewritten behind gitar's back (conftest); gitar's next write catches up.
    _ok(ws.gitar("learn", review.wider, "capacity helps"))
    lines = _attempt_lines(review)
    # The same rows as `gitar log`: kept, discarded and crashed. git orders them by commit date, and
    # this fixture's commits share one fixed date, so only the rows are compared, not their order.
    assert sorted(lines) == sorted(_log_rows(review))
    by_sha = {ln.split()[0]: ln for ln in lines}
    assert set(by_sha) == {c[:7] for c in (review.rotary, review.crash, review.lr05, review.lr04, review.wider,
                                           review.baseline)}
    assert by_sha[review.lr05[:7]].split()[1:3] == ["discard", "0.991500"]
    crash = by_sha[review.crash[:7]]
    assert "crash" in crash and "RuntimeError" in crash and "OOM second line" in crash  # one line
    assert all(len(ln) < 200 for ln in lines)
    # plain `git log` shows the attempt's line under the commit, not its JSON records
    shown = _ok(ws.git("log", "-1", review.rotary))
    assert "Notes (gitar-summary):" in shown and "keep" in shown and '{"status"' not in shown
    records = _ok(ws.git("log", "-1", "--notes=gitar", "--format=%N", review.rotary))
    assert json.loads(records.splitlines()[0])["status"] == "keep"  # the records are there, unchanged


def test_the_records_stay_one_json_line_per_run(review: Built) -> None:
    note = _ok(review.ws.git("notes", "--ref", "refs/notes/gitar", "show", review.baseline))
    lines = note.splitlines()
    assert len(lines) == 3 and all(json.loads(ln)["commit"] == review.baseline for ln in lines)


def test_a_lost_or_stale_summary_is_rebuilt_by_init(review: Built) -> None:
    ws = review.ws
    _ok(ws.gitar("learn", review.wider, "capacity helps"))
    before = _attempt_lines(review)
    ws.git("update-ref", "-d", SUMMARY_REF)
    assert all(ln.split() == [ln.split()[0]] for ln in _attempt_lines(review))  # shas only: nothing to show
    _ok(ws.gitar("init", "t1"))  # the repair run
    assert _attempt_lines(review) == before
    # a summary derived from notes this clone does not have (a rewound notebook): rebuilt whole
    ws.git("update-ref", SUMMARY_REF, _ok(ws.git("commit-tree", "-m", "gitar: summary of " + "0" * 40,
                                                  "4b825dc642cb6eb9a060e54bf8d69288fbee4904")).strip())
    _ok(ws.gitar("init", "t1"))
    assert _attempt_lines(review) == before


def test_a_new_record_updates_only_its_own_line(review: Built) -> None:
    ws = review.ws
    _ok(ws.gitar("learn", review.wider, "capacity helps"))
    ws.write_train(0.97)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())  # git attempts orders by commit date
    proc = ws.gitar("try", "deeper: 6 layers", env={"GIT_AUTHOR_DATE": now, "GIT_COMMITTER_DATE": now})
    assert proc.returncode == 0, proc.stderr
    lines = _attempt_lines(review)
    # Its commit is the only one dated now (the fixture's share one fixed date): git lists it first.
    assert len(lines) == 7 and "deeper: 6 layers" in lines[0] and lines[0].split()[1] == "keep"
    assert sorted(lines[1:]) == sorted(_log_rows(review)[1:])


def test_git_log_does_not_warn_before_the_first_record(hermetic: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # init points notes.displayRef at the summary ref; git warns "notes ref ... is invalid" on
    # every `git log` while that ref does not exist, which it did not until the first record.
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    _ok(ws.gitar("init", "t1"))
    for args in (("log", "-1"), ("show", "--stat", "HEAD"), ("attempts",)):
        proc = ws.git(*args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
    _ok(ws.gitar("run"))  # the first record: the summary is derived from it as always
    shown = _ok(ws.git("log", "-1"))
    assert "Notes (gitar-summary):" in shown and "keep" in shown
