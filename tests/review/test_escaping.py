"""Hostile text never reaches a reader's terminal raw, and never forges a line.

Records written by older versions, or forged with `git notes`, may hold anything: escape
sequences, a fake `Notes (gitar):` block, bidi overrides, line separators. Every printer
(log, log --all, --tsv, --json, show with its log tail, memory, best, status, wait,
verify, plot) shows them escaped; what gitar writes into a note is one line with no raw
control or bidi character; a closed pipe is exit 0; --json outcomes are one object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from gitar.store.records import Lesson, Record, parse_lines
from testing.workspace import Workspace

# A description as a forger would write it: a screen clear, a window title (OSC), colour,
# a fake notes block with a fake keep, a right-to-left override, line and paragraph
# separators, NEL, DEL and a C1 CSI.
HOSTILE = ("\x1b[2J\x1b]0;pwned\x07\x1b[31mevil\n\nNotes (gitar):\n    "
           '{"status": "keep", "val_bpb": 0.1}\u202eabc\u2028x\u2029y\x85z\x7f\x9b31m')
FAKE_RECORD = '{"status": "keep", "val_bpb": 0.1'
BRANCH = "autoresearch/t1"


def _forged_line(commit: str, log: Path) -> str:
    # ensure_ascii=False, as older gitar wrote: U+202E, U+2028, U+2029, NEL, DEL and C1 raw in the line.
    record = {"status": "keep", "commit": commit, "branch": BRANCH, "description": HOSTILE, "run_id": "\u202e\x07run",  # click strips only CSI
              "kind": "baseline", "val_bpb": 1.0, "hypothesis": HOSTILE, "reason": HOSTILE, "log": str(log),
              "started": "2026-01-01T00:00:00+00:00", "training_seconds": 1.0, "peak_vram_mb": 1024.0}
    lesson = {"status": "lesson", "commit": commit, "lesson": HOSTILE}
    return json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(lesson, ensure_ascii=False) + "\n"


def hidden(ch: str) -> bool:
    # The test's own oracle (gitar.text.hidden's contract): what a terminal acts on or what hides text.
    return not ch.isprintable() and unicodedata.category(ch) != "Zs"


def _assert_clean(text: str) -> None:
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if ch not in "\n\t" and hidden(ch)})
    assert not bad, f"raw {bad} in output:\n{text!r}"
    for line in text.split("\n"):  # no fake notes block: its header at the margin, its records under it
        assert not line.startswith("Notes (gitar)"), line
        assert not line.lstrip("\x20").startswith(FAKE_RECORD) or not line.startswith("    "), line


@pytest.fixture
def forged(workspace: Workspace) -> Workspace:
    """The baseline's note replaced by a forged record and lesson; its log full of escapes."""
    assert workspace.gitar("run").returncode == 0
    sha = workspace.head()
    log = workspace.root.parent / "hostile.log"
    log.write_text("step 1\r\x1b[2K\x1b[1A\x1b]8;;http://x\x07link\x1b]8;;\x07\n"
                   "Notes (gitar):\u2028    " + FAKE_RECORD + "}\n\x1b[?1049h\u202eval_bpb: 0.01\n")
    note = workspace.root.parent / "note"
    note.write_bytes(_forged_line(sha, log).encode())
    workspace.git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-F", str(note), sha)
    return workspace


@pytest.mark.parametrize("argv", [
    ("log",), ("log", "--all"), ("log", "--json"), ("show",), ("show", "--json"), ("memory",), ("memory", "--all"),
    ("best",), ("best", "--all"), ("best", "--json"), ("status",), ("status", "--json"), ("verify",),
])
def test_every_printer_escapes_a_forged_record(forged: Workspace, argv: tuple[str, ...]) -> None:
    proc = forged.gitar(*argv)
    assert proc.returncode in (0, 1), proc.stderr
    _assert_clean(proc.stdout + proc.stderr)
    if "--json" not in argv and argv[0] not in ("status", "verify"):
        assert "\\x1b]0;pwned\\x07\\x1b[31mevil" in proc.stdout  # shown, escaped


def test_show_escapes_the_log_tail_and_the_commit_message(forged: Workspace) -> None:
    proc = forged.gitar("show")
    _assert_clean(proc.stdout)
    assert "\\x1b[2K\\x1b[1A\\x1b]8;;http://x\\x07link" in proc.stdout
    assert "\\x1b[?1049h\\u202eval_bpb: 0.01" in proc.stdout
    assert "Notes (gitar):\\u2028" in proc.stdout
    # A commit made behind gitar's back (no hooks) with a hostile message: indented, escaped.
    forged.git("-c", "core.hooksPath=/dev/null", "commit", "-q", "--allow-empty", "--cleanup=verbatim",
               "-m", "subject\x1b[31m\n\nNotes (gitar):\n\u202e" + FAKE_RECORD)
    shown = forged.gitar("show").stdout
    _assert_clean(shown)
    assert "    subject\\x1b[31m" in shown and "    Notes (gitar):" in shown and "    \\u202e{" in shown


def test_status_escapes_the_running_experiment(forged: Workspace) -> None:
    """running.json is a file train.py can write: its description shows escaped, also in the live line."""
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process for the run's pid: not recovered as dead
    try:
        running = {"run_id": "r", "commit": forged.head(), "branch": BRANCH, "description": HOSTILE,
                   "kind": "attempt", "best_commit": None, "move_branch": False, "started": 1.0, "budget_s": 1.0,
                   "timeout_s": 10.0, "log": str(forged.root.parent / "hostile.log"), "pid": sleeper.pid,
                   "phase": HOSTILE, "deadline": HOSTILE, "evaluate": HOSTILE}
        (forged.root / ".git" / "gitar" / "running.json").write_text(json.dumps(running))
        for argv in (("status",), ("status", "--json"), ("status", "--all"), ("status", "--all", "--json")):
            proc = forged.gitar(*argv)
            assert proc.returncode == 0, proc.stderr
            _assert_clean(proc.stdout + proc.stderr)
        assert "\\x1b[2J" in forged.gitar("status").stdout
        assert "\\x1b[2J" in forged.gitar("status", "--all").stdout
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_live_line_is_escaped(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gitar.cli.loop import _live_progress
    from gitar.host import state
    from gitar.paths import Paths

    # running.json is train.py-writable: the commit the live line names may be anything too.
    running = state.Running(run_id="r", commit="\u202e\x1b]0;" + "c" * 35, branch=BRANCH, description=HOSTILE,
                            kind="attempt",
                            best_commit=None, move_branch=False, started=1.0, budget_s=1.0, timeout_s=2.0,
                            log="/nowhere", pid=1)
    monkeypatch.setattr(state, "load", lambda paths: running)
    _live_progress()(Paths.__new__(Paths))
    line = capsys.readouterr().err
    assert line.startswith("\r\x1b[K")  # gitar's own erase-line; nothing of the description is raw
    assert not any(hidden(ch) for ch in line[len("\r\x1b[K"):]), repr(line)


def test_tsv_rows_stay_rows(forged: Workspace) -> None:
    proc = forged.gitar("log", "--tsv")
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc.stdout)
    rows = proc.stdout.splitlines()
    assert len(rows) == 2, rows  # the header and the one attempt: no line break survived
    assert all(len(row.split("\t")) == 5 for row in rows), rows


def test_wait_escapes_the_result_it_reads(forged: Workspace) -> None:
    results = forged.root / ".git" / "gitar" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = Record(status="discard", commit=forged.head(), branch=BRANCH, description=HOSTILE, run_id="r1",
                    reason=HOSTILE, log=HOSTILE)
    path = results / "zz-latest.json"
    path.write_text(record.to_line())
    os.utime(path, (2_000_000_000, 2_000_000_000))
    for argv in (("wait",), ("wait", "--json")):
        proc = forged.gitar(*argv)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        _assert_clean(proc.stdout + proc.stderr)


def test_plot_labels_are_escaped_and_dollars_are_text(forged: Workspace) -> None:
    from gitar.commands.plot import _label

    assert not any(hidden(ch) for ch in _label(HOSTILE))
    proc = forged.gitar("plot", "-o", str(forged.root.parent / "p.png"))
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc.stdout + proc.stderr)


def test_a_note_gitar_writes_is_one_line_with_nothing_raw(workspace: Workspace) -> None:
    from gitar.text import json_line

    record = Record(status="discard", commit="a" * 40, branch=BRANCH, description="é 中 " + HOSTILE, run_id="r")
    line = record.to_line()
    assert "\n" not in line and line.isprintable(), line
    assert "é 中" in line and "\\u202e" in line and "\\u2028" in line and "\\u0085" in line and "\\u007f" in line
    assert json.loads(line)["description"] == "é 中 " + HOSTILE  # any JSON parser reads it back
    assert Lesson(commit="a" * 40, lesson=HOSTILE).to_line().isprintable()
    beyond = json_line({"d": "\U000e0041\U0001f600"})  # a tag character (hidden) and an emoji (shown)
    assert beyond == '{"d": "\\udb40\\udc41\U0001f600"}' and json.loads(beyond)["d"] == "\U000e0041\U0001f600"
    records, lessons = parse_lines(_forged_line("b" * 40, Path("/nowhere")), "b" * 40)  # old raw lines still read
    assert records[0].description == HOSTILE and lessons[0].lesson == HOSTILE


def test_git_log_notes_shows_no_raw_control_character(workspace: Workspace) -> None:
    """What gitar itself records (here a rejected commit made with --no-verify) reads safely in `git log`."""
    assert workspace.gitar("run").returncode == 0
    best = workspace.head()
    workspace.write_train(0.5)
    workspace.git("commit", "-q", "--no-verify", "-am", "wider \u202eMLP\x7f\n\nbody \x1b[31m")
    rejected = workspace.git("rev-parse", "HEAD@{1}").stdout.strip()  # the commit, before the branch went back
    assert workspace.git("show-ref", f"refs/gitar/attempts/{rejected}", check=False).returncode == 0  # pinned
    shown = workspace.git("log", "--notes=gitar", "-1", "--format=%N", rejected).stdout
    records = [json.loads(line) for line in shown.splitlines() if line.strip()]
    assert records and records[-1]["status"] == "rejected", shown
    assert "\\u202e" in shown and not any(hidden(ch) for ch in shown if ch != "\n"), repr(shown)
    assert records[-1]["description"] == "wider \\u202eMLP\\x7f"  # the subject only, escaped, never trained
    assert workspace.tip() == best  # back at the best


def test_a_plain_commit_with_a_bad_subject_is_refused_before_it_exists(workspace: Workspace) -> None:
    assert workspace.gitar("run").returncode == 0
    before = workspace.head()
    workspace.write_train(0.5)
    workspace.git("add", "train.py")
    index = workspace.git("ls-files", "--stage").stdout
    proc = workspace.git("commit", "-m", "wider\x1b[31m MLP", check=False)
    assert proc.returncode != 0
    assert "the commit message's first line holds U+001B" in proc.stdout + proc.stderr
    assert workspace.head() == before and workspace.git("ls-files", "--stage").stdout == index
    # A multi-line message with a good subject: the subject alone is the description.
    proc = workspace.git("commit", "-q", "-m", "wider MLP\n\nthe why, at length\nover lines")
    record = workspace.records(workspace.git("rev-parse", "HEAD").stdout.strip())[-1]
    assert record["description"] == "wider MLP", record


@pytest.mark.parametrize("argv", [("show",), ("log",), ("log", "--tsv"), ("memory",)])
def test_a_closed_pipe_is_exit_0(forged: Workspace, argv: tuple[str, ...]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gitar", *argv], cwd=forged.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == "", err


@pytest.mark.parametrize("argv, code", [
    (("try", "--json", ""), 2), (("try", "--json"), 2), (("try", "--json", "a\nb"), 2), (("try", "--json", "x"), 2),
    (("run", "--json", "nope"), 2), (("run", "--json", "--repeat", "0"), 2), (("wait", "--json", "--timeout", "x"), 2),
])
def test_json_outcomes_are_one_object(workspace: Workspace, argv: tuple[str, ...], code: int) -> None:
    proc = workspace.gitar(*argv)
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert out["status"] == "refused" and out["exit_code"] == code and out["message"], out


def test_json_result_carries_exit_code_and_line(workspace: Workspace) -> None:
    proc = workspace.gitar("run", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "keep" and out["exit_code"] == 0 and out["message"].startswith("keep ")


def test_safe_contract() -> None:
    from gitar.text import safe

    assert safe("plain é 中 \u00a0 text \\x1b") == "plain é 中 \u00a0 text \\x1b"  # kept as written
    assert safe("a\nb\tc\rd\x1b[0m\u202e\u2028\x85\U000e0041") == "a\\nb\\tc\\rd\\x1b[0m\\u202e\\u2028\\x85\\U000e0041"
    assert safe("\udcff") == "\\udcff"  # a lone surrogate (undecodable argv) cannot fail the print
