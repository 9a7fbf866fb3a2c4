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

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.hermetic import apply_hermetic
from testing.history import CRASH_DESCRIPTION, Built, as_older_gitar_wrote, attempt, seeded_train
from testing.workspace import Workspace, make_workspace


@pytest.fixture(scope="session")
def review_template(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> Iterator[Built]:
    base = tmp_path_factory.mktemp("review")
    home = base / "home"
    with pytest.MonkeyPatch.context() as mp:
        # The same hermetic environment tests/conftest.py's `hermetic` gives a test, for the session;
        # real dates, since the review orders attempts in time.
        apply_hermetic(mp, home, pre_commit_home, fixed_dates=False)
        ws = make_workspace(base / "ws")
        (ws.root / "train.py").write_text(seeded_train(1.0))
        ws.git("commit", "-qam", "a trainer whose result moves with the seed")
        mp.chdir(ws.root)
        assert ws.gitar("init", "t1").returncode == 0
        proc = ws.gitar("run", "--repeat", "3")
        assert proc.returncode == 0, proc.stderr
        baseline = ws.head()
        built = Built(
            ws=ws, baseline=baseline,
            wider=attempt(ws, 0.99, "wider MLP", hypothesis="more capacity pays at this size"),
            lr04=attempt(ws, 0.995, "increase LR to 0.04"),
            lr05=attempt(ws, 0.9915, "Increase lr to 0.05"),
            crash=attempt(ws, 1.0, '"double" width OOM', mode="crash"),
            rotary=attempt(ws, 0.98, "rotary base 20000"),
        )
        as_older_gitar_wrote(ws, built.crash, CRASH_DESCRIPTION)
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
