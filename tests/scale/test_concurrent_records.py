"""Agents of one clone writing records at the same moment: no line of any of them is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from testing.hermetic import REPO_ROOT
from testing.workspace import init_repo

WRITERS = 3
LINES = 40  # per writer: enough rounds that two writers meet between read and write

# Each writer waits for the start file, then appends lessons alternately to its own commit and to
# one commit they all share (as confirm reruns of one candidate do), through gitar's notebook.
WRITER = """
import sys, time
from pathlib import Path
from gitar.store.git import Git
from gitar.store.records import Lesson
from gitar.review import summary

root, own, shared, tag, start, lines = sys.argv[1:]
book = summary.writer(Git.discover(root))
while not Path(start).exists():
    time.sleep(0.001)
for i in range(int(lines)):
    book.add_lesson(Lesson(commit=own if i % 2 else shared, lesson=f"{tag} {i}"))
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_concurrent_writers_lose_no_line(hermetic: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    commits = [init_repo(root, message="c0").head()]
    for k in range(1, WRITERS + 1):
        _git(root, "commit", "-q", "--allow-empty", "-m", f"c{k}")
        commits.append(_git(root, "rev-parse", "HEAD"))
    shared, own = commits[0], commits[1:]
    start = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), own[k], shared, f"w{k}", str(start), str(LINES)],
                              cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True) for k in range(WRITERS)]
    time.sleep(1.0)  # every writer has imported gitar and is waiting
    start.touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "warning" not in err, err  # losing a race to another writer is not the agent's concern

    def lines(commit: str) -> set[str]:
        note = _git(root, "notes", "--ref", "refs/notes/gitar", "show", commit)
        return {line for line in note.splitlines() if line.strip()}

    for k in range(WRITERS):
        mine = {line for line in lines(own[k]) if f'"w{k} ' in line}
        assert len(mine) == LINES // 2, f"writer {k} lost {LINES // 2 - len(mine)} of its lines on its own commit"
    assert len(lines(shared)) == WRITERS * (LINES - LINES // 2), "lines on the shared commit were lost"
    # The scratch refs the writes went through are gone; only the notebook and its summary remain.
    notes_refs = _git(root, "for-each-ref", "--format=%(refname)", "refs/notes/").split()
    assert notes_refs == ["refs/notes/gitar", "refs/notes/gitar-summary"], notes_refs
    # And the one-line view git's own tools show was derived from the notebook as it ended.
    derived = _git(root, "log", "-1", "--format=%s", "refs/notes/gitar-summary")
    assert derived == f"gitar: summary of {_git(root, 'rev-parse', 'refs/notes/gitar')}"
