"""Repeats are recognised by content: the same agent-owned files under a new description (gitar/loop/repeats.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gitar.loop.opened import Opened
from gitar.loop.repeats import CONTENTS_FILE, Change, commit_content, contents, find
from gitar.paths import Paths
from gitar.review import summary
from gitar.store.git import Git
from gitar.store.records import DISCARD, Notebook, Record
from testing.trainers import fake_train
from testing.workspace import Workspace, make_workspace

REFUSED, NOT_KEPT = 2, 1


def _sha_in(line: str, word: str) -> str:
    """The 7-hex sha after `word` in a result line."""
    return line.split(word, 1)[1].split()[0]


@pytest.fixture
def measured(workspace: Workspace) -> Workspace:
    assert workspace.gitar("run").returncode == 0
    return workspace


def _refusing(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A measured workspace whose ground.json (user-owned, pinned at init) says repeats "refuse"."""
    ws = make_workspace(tmp_path / "ws")
    ground = json.loads((ws.root / "ground.json").read_text())
    ground["experiment"]["repeats"] = "refuse"
    (ws.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    ws.git("commit", "-qam", "refuse repeats")
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    return ws


def test_the_same_files_under_a_new_description_are_flagged_as_a_repeat(measured: Workspace) -> None:
    ws = measured
    ws.write_train(1.1)
    first = ws.gitar("try", "wider MLP (4x -> 5x)")
    assert first.returncode == NOT_KEPT, first.stdout + first.stderr
    assert "repeat of" not in first.stdout
    sha = first.stdout.split()[1]
    ws.write_train(1.1)  # the identical train.py (and model.json) again, described otherwise
    again = ws.gitar("try", "bigger hidden layer")
    assert again.returncode == NOT_KEPT, again.stdout + again.stderr
    assert f"; repeat of {sha} (discard, val_bpb 1.100000); branch back at" in again.stdout, again.stdout
    records = {r["description"]: r for r in ws.all_records()}
    assert records["bigger hidden layer"]["agent_sha256"] == records["wider MLP (4x -> 5x)"]["agent_sha256"]
    assert records["bigger hidden layer"]["repeat_of"]["commit"].startswith(sha)
    assert records["bigger hidden layer"]["repeat_of"]["times"] == 1
    # A third time names the first again and how many came before.
    ws.write_train(1.1)
    third = ws.gitar("try", "MLP 5x")
    assert f"; repeat of {sha} (discard, val_bpb 1.100000, 2 earlier attempts with these files)" in third.stdout
    # A change to another file is no repeat; neither is a re-measurement of the best.
    ws.write_train(1.2)
    assert "repeat of" not in ws.gitar("try", "wider MLP (4x -> 5x)").stdout  # the same words, other files
    assert "repeat of" not in ws.gitar("run").stdout

    memory = ws.gitar("memory").stdout
    assert "repeats by content" in memory, memory
    line = next(ln for ln in memory.splitlines() if ln.startswith("3× "))
    assert line.startswith(f'3× {sha} discard 1.100000 "wider MLP (4x -> 5x)" — again as ') and \
        '"bigger hidden layer"' in line and '"MLP 5x"' in line
    log = ws.gitar("log").stdout
    assert sum(f"[repeat of {sha}]" in ln for ln in log.splitlines()) == 2, log


def test_a_discarded_attempt_recorded_before_records_carried_the_identity_is_matched(measured: Workspace) -> None:
    ws = measured
    git = Git.discover(ws.root)
    agent = ("train.py", "model.json")
    ws.write_train(1.3)
    ws.git("add", "train.py")
    tree = ws.git("write-tree").stdout.strip()
    old = ws.git("commit-tree", tree, "-p", "HEAD", "-m", "an old attempt").stdout.strip()
    ws.git("reset", "-q", "train.py")
    notebook = summary.writer(git)
    notebook.pin(old, "an old attempt")
    # As an older gitar wrote it: no agent_sha256 in the line.
    notebook.append(Record(status=DISCARD, commit=old, branch="autoresearch/t1", description="an old attempt",
                           run_id="r-old", val_bpb=1.3, wall_seconds=1.0, started="2025-01-01T00:00:00+00:00"))
    assert "agent_sha256" not in ws.git("notes", "--ref", "refs/notes/gitar", "show", old).stdout
    content = commit_content(git, old, agent)
    assert content is not None
    earlier = find(Opened.of(git), Change(content, "any harness", "autoresearch/t1"), agent)
    assert [(e.commit, e.status, e.val_bpb, e.ran) for e in earlier] == [(old, DISCARD, 1.3, True)]
    # And through the loop: the same files tried now are its repeat.
    ws.write_train(1.3)
    proc = ws.gitar("try", "something new, surely")
    assert f"; repeat of {old[:7]} (discard, val_bpb 1.300000)" in proc.stdout, proc.stdout + proc.stderr
    # The index of identities, brought up to date note by note, equals one built from nothing,
    # and a damaged one is rebuilt.
    index = contents(git, Paths.of(git), agent)
    assert index[old] == {content} and len(index) == 3  # the baseline, the old attempt, the new one
    cache = Paths.of(git).base / CONTENTS_FILE
    cache.unlink()
    assert contents(git, Paths.of(git), agent) == index
    cache.write_text("gitar-contents 1 0000 garbage\n")
    assert contents(git, Paths.of(git), agent) == index


def test_refuse_refuses_a_repeat_before_anything_runs(hermetic: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _refusing(hermetic, tmp_path, monkeypatch)
    ws.write_train(1.1)
    first = ws.gitar("try", "wider MLP")
    assert first.returncode == NOT_KEPT
    sha = first.stdout.split()[1]
    ws.write_train(1.1)
    refs = ws.git("show-ref").stdout
    index = ws.git("ls-files", "--stage").stdout
    notes = ws.all_records()
    proc = ws.gitar("try", "bigger hidden layer")
    assert proc.returncode == REFUSED, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'gitar: error: repeat of {sha} (discard, val_bpb 1.100000) '
                                                   '"wider MLP": train.py and model.json are identical to it'), lines
    assert 'experiment.repeats is "refuse"' in lines[0]
    # Nothing ran and nothing changed: refs (branch, notes, pins), index, work tree.
    assert ws.git("show-ref").stdout == refs and ws.git("ls-files", "--stage").stdout == index
    assert ws.all_records() == notes
    assert (ws.root / "train.py").read_text() == fake_train(1.1)
    # A plain commit is refused by the hook the same way.
    ws.git("add", "train.py")
    plain = ws.git("commit", "-m", "plain commit of the same files", check=False)
    assert plain.returncode != 0 and f"repeat of {sha}" in plain.stdout + plain.stderr
    ws.git("reset", "-q", "train.py")
    # A re-measurement is not a repeat, and another change runs.
    assert ws.gitar("run").returncode == 0
    ws.write_train(0.9)
    assert ws.gitar("try", "narrower").returncode == 0


def test_refuse_still_runs_a_repeat_of_an_attempt_that_never_ran(hermetic: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _refusing(hermetic, tmp_path, monkeypatch)
    git = Git.discover(ws.root)
    ws.write_train(1.1)
    ws.git("add", "train.py")
    tree = ws.git("write-tree").stdout.strip()
    never = ws.git("commit-tree", tree, "-p", "HEAD", "-m", "held up").stdout.strip()
    ws.git("reset", "-q", "train.py")
    Notebook(git).pin(never, "held up")
    # Rejected because another experiment held the lock: no result to stand on.
    summary.writer(git).append(Record(status="rejected", commit=never, branch="autoresearch/t1", description="held up",
                                run_id="r-held", reason="another experiment holds the lock",
                                agent_sha256=commit_content(git, never, ("train.py", "model.json"))))
    proc = ws.gitar("try", "wider MLP")
    assert proc.returncode == NOT_KEPT, proc.stdout + proc.stderr
    assert f"; repeat of {never[:7]} (rejected)" in proc.stdout


def test_a_repeat_committed_past_the_preflight_is_recorded_rejected_under_refuse(
        hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _refusing(hermetic, tmp_path, monkeypatch)
    ws.write_train(1.1)
    sha = ws.gitar("try", "wider MLP").stdout.split()[1]
    best = ws.tip()
    ws.write_train(1.1)
    ws.git("add", "train.py")
    ws.git("commit", "-q", "--no-verify", "-m", "skipped the preflight")  # the post-commit hook still runs
    records = ws.records(ws.git("rev-parse", "refs/gitar/attempts/" + _attempt_of(ws, "skipped the preflight"))
                         .stdout.strip())
    assert [r["status"] for r in records] == ["rejected"]
    assert str(records[0]["reason"]).startswith(f"not run: repeat of {sha}")
    assert ws.tip() == best


def _attempt_of(ws: Workspace, description: str) -> str:
    return next(str(r["commit"]) for r in ws.all_records() if r["description"] == description)


def test_the_index_of_identities_survives_notes_spread_into_fanout_subtrees(measured: Workspace) -> None:
    ws = measured
    git = Git.discover(ws.root)
    agent = ("train.py", "model.json")
    ws.write_train(1.1)
    assert ws.gitar("try", "one more note").returncode == NOT_KEPT
    before = contents(git, Paths.of(git), agent)  # cached at this notes tip
    assert len(before) == 2
    # git spreads a large notebook into ab/cdef… subtrees: every note deleted and added at a new path.
    flat = ws.git("ls-tree", "refs/notes/gitar").stdout.splitlines()
    subtrees: dict[str, list[str]] = {}
    for line in flat:
        meta, name = line.split("\t")
        subtrees.setdefault(name[:2], []).append(f"{meta}\t{name[2:]}")
    top = [f"040000 tree {_mktree(ws, entries)}\t{prefix}" for prefix, entries in subtrees.items()]
    tree = _mktree(ws, top)
    spread = ws.git("commit-tree", tree, "-p", "refs/notes/gitar", "-m", "fanout").stdout.strip()
    ws.git("update-ref", "refs/notes/gitar", spread)
    assert contents(git, Paths.of(git), agent) == before
    (Paths.of(git).base / CONTENTS_FILE).unlink()
    assert contents(git, Paths.of(git), agent) == before


def _mktree(ws: Workspace, entries: list[str]) -> str:
    return subprocess.run(["git", "mktree"], cwd=ws.root, input="\n".join(entries) + "\n", capture_output=True,
                          text=True, check=True).stdout.strip()
