"""Reading the whole notebook at once: every note git knows, in git's order, whichever way it is read.

A long notebook is streamed by `git notes list | git cat-file --batch` while it is parsed; a
short one is read in-process. Both must give exactly what git's own notes machinery gives,
fanout subtrees included, and a git that fails part-way must cost nothing but speed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pygit2
import pytest

from gitar.review import history
from gitar.store import notes, records
from gitar.store.git import Git
from gitar.store.notes import note_blobs
from gitar.store.refs import NOTES_REF
from testing.history import synthesise_history
from testing.workspace import Workspace

STREAMED, IN_PROCESS = 1, 10**9  # notes.STREAM_FROM: from how many notes git streams them


def _reference(ws: Workspace) -> list[tuple[str, bytes]]:
    """(annotated commit, note blob) in the order of libgit2's notes iterator, checked against `git notes list`."""
    repo = pygit2.Repository(str(ws.root))
    notes = [(str(n.annotated_id), repo[n.id].data) for n in repo.notes(NOTES_REF)]  # type: ignore[call-arg]
    listed = {line.split()[1] for line in ws.git("notes", "--ref", NOTES_REF, "list").stdout.splitlines()}
    assert {sha for sha, _ in notes} == listed
    return notes


@pytest.fixture
def long_notebook(workspace: Workspace) -> Workspace:
    ws = workspace
    synthesise_history(ws, 300)  # past git's fanout threshold: notes live in ab/cdef… subtrees
    assert any(len(line.split("\t")[1]) == 2 for line in ws.git("ls-tree", NOTES_REF).stdout.splitlines())
    first = ws.git("notes", "--ref", NOTES_REF, "list").stdout.split()[1]
    ws.git("notes", "--ref", NOTES_REF, "append", "-m", "not json", first)  # after a blank line: line 3
    return ws


@pytest.mark.parametrize("stream_from", [STREAMED, IN_PROCESS], ids=["streamed", "in-process"])
def test_every_note_in_git_order(long_notebook: Workspace, stream_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notes, "STREAM_FROM", stream_from)
    # Each way alone: streamed, nothing may be left for the in-process walk to fill in.
    unused = "_walk" if stream_from == STREAMED else "_streamed"
    monkeypatch.setattr(notes, unused, lambda *_: pytest.fail(f"{unused} was used"))
    got = list(note_blobs(Git.discover(long_notebook.root), NOTES_REF))
    assert len(got) == 300
    assert got == _reference(long_notebook)


def test_a_git_that_stops_part_way_costs_only_speed(long_notebook: Workspace, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _reference(long_notebook)
    real = shutil.which("git")
    assert real is not None
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    # cat-file's output cut after 20 kB, in the middle of a blob: the rest is read in-process.
    fake.write_text(f'#!/bin/sh\nif [ "$1" = cat-file ]; then "{real}" "$@" | head -c 20000; exit 0; fi\n'
                    f'exec "{real}" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(notes, "STREAM_FROM", STREAMED)
    assert list(note_blobs(Git.discover(long_notebook.root), NOTES_REF)) == expected
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git at all
    assert list(note_blobs(Git.discover(long_notebook.root), NOTES_REF)) == expected


def test_entries_that_are_not_notes_are_left_out(workspace: Workspace) -> None:
    ws = workspace
    synthesise_history(ws, 3)
    # A file in the notes tree whose path is no object id: git keeps it but it is not a note.
    stream = ("commit refs/notes/gitar\ncommitter T <t@example.com> 1700000000 +0000\ndata 4\nodd\n"
              "from refs/notes/gitar^0\nM 100644 inline README\ndata 6\nhello\n\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=ws.root, input=stream.encode(), check=True)
    assert "README" in ws.git("ls-tree", "--name-only", NOTES_REF).stdout
    got = list(note_blobs(Git.discover(ws.root), NOTES_REF))
    listed = [line.split()[1] for line in ws.git("notes", "--ref", NOTES_REF, "list").stdout.splitlines()]
    assert [sha for sha, _ in got] == listed and len(got) == 3


def test_history_is_the_same_either_way(long_notebook: Workspace, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    git = Git.discover(long_notebook.root)
    loaded = []
    for stream_from in (STREAMED, IN_PROCESS):
        monkeypatch.setattr(notes, "STREAM_FROM", stream_from)
        monkeypatch.setattr(records, "_warned", set())  # each read warns afresh
        h = history.load(git, "autoresearch/t1")
        loaded.append(([(a.commit, a.status, a.val_bpb, a.runs) for a in h.attempts], h.lineage, h.counts))
        warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
        assert len(warnings) == 1 and "skipping line 3" in warnings[0]  # the line that is not json
    assert loaded[0] == loaded[1]
    assert len(loaded[0][0]) == 300 and loaded[0][2]["keep"] == 30
