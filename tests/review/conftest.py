"""A small real history, built once per session with `gitar run` and `gitar try`, copied per test.

The history (branch autoresearch/t1), in time order:
  baseline  3 runs 1.000 / 1.001 / 1.002 (the trainer adds seed % 3 thousandths: measured noise)
  keep      "wider MLP"               0.990   hypothesis "more capacity pays at this size"
  discard   "increase LR to 0.04"     0.995
  discard   "Increase lr to 0.05"     0.9915  (the same idea with another number: one group)
  crash     '"double" width<TAB>OOM<NL>second line'   (quote, tab and newline in the description: gitar
            refuses them now, so the record is rewritten as an older gitar stored it)
  keep      "rotary base 20000"       0.980
Each test gets its own copy, so it may add to the history or damage it freely.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.hermetic import apply_hermetic
from testing.trainers import fake_train
from testing.workspace import Workspace, make_workspace

CRASH_DESCRIPTION = '"double" width\tOOM\nsecond line'


def _as_older_gitar_wrote(ws: Workspace, sha: str, description: str) -> None:
    """Put back into the commit's record a description that gitar refuses today."""
    note = ws.git("notes", "--ref", "refs/notes/gitar", "show", sha).stdout
    lines = [json.loads(line) for line in note.splitlines() if line.strip()]
    for record in lines:
        record["description"] = description
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    ws.git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-m", text.rstrip("\n"), sha)


@dataclass(frozen=True)
class Built:
    ws: Workspace
    baseline: str
    wider: str
    lr04: str
    lr05: str
    crash: str
    rotary: str


def _seeded_train(val_bpb: float) -> str:
    source = fake_train(val_bpb)
    line = f"VAL_BPB = {val_bpb!r}\n"
    assert line in source
    return source.replace(line, f"VAL_BPB = {val_bpb!r} + (int(os.environ.get('GITAR_SEED', '42')) % 3) * 0.001\n")


def _attempt(ws: Workspace, val_bpb: float, description: str, mode: str = "ok", hypothesis: str | None = None) -> str:
    ws.write_train(val_bpb, mode)
    args = ["try", description, "--json"] + (["--hypothesis", hypothesis] if hypothesis else [])
    proc = ws.gitar(*args)
    assert proc.returncode in (0, 1), proc.stderr
    return str(json.loads(proc.stdout)["commit"])


@pytest.fixture(scope="session")
def review_template(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> Iterator[Built]:
    base = tmp_path_factory.mktemp("review")
    home = base / "home"
    with pytest.MonkeyPatch.context() as mp:
        # The same hermetic environment tests/conftest.py's `hermetic` gives a test, for the session;
        # real dates, since the review orders attempts in time.
        apply_hermetic(mp, home, pre_commit_home, fixed_dates=False)
        ws = make_workspace(base / "ws")
        (ws.root / "train.py").write_text(_seeded_train(1.0))
        ws.git("commit", "-qam", "a trainer whose result moves with the seed")
        mp.chdir(ws.root)
        assert ws.gitar("init", "t1").returncode == 0
        proc = ws.gitar("run", "--repeat", "3")
        assert proc.returncode == 0, proc.stderr
        baseline = ws.head()
        built = Built(
            ws=ws, baseline=baseline,
            wider=_attempt(ws, 0.99, "wider MLP", hypothesis="more capacity pays at this size"),
            lr04=_attempt(ws, 0.995, "increase LR to 0.04"),
            lr05=_attempt(ws, 0.9915, "Increase lr to 0.05"),
            crash=_attempt(ws, 1.0, '"double" width OOM', mode="crash"),
            rotary=_attempt(ws, 0.98, "rotary base 20000"),
        )
        _as_older_gitar_wrote(ws, built.crash, CRASH_DESCRIPTION)
    yield built


@pytest.fixture
def review(review_template: Built, hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """A private copy of the session's history, cwd inside it."""
    root = tmp_path / "ws"
    shutil.copytree(review_template.ws.root, root, symlinks=True)
    monkeypatch.chdir(root)
    ws = Workspace(root)
    assert ws.head() == review_template.rotary
    t = review_template
    return Built(ws, t.baseline, t.wider, t.lr04, t.lr05, t.crash, t.rotary)
