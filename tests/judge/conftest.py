"""Workspaces for the keep-rule tests, with the noisy fake trainer (testing/trainers.py): noise by seed.

The real loop runs (git, the pre-commit hooks, `gitar run`/`gitar try`), and each run's
val_bpb is BASE + OFFSETS[GITAR_SEED], so a test knows exactly which number every run of
a commit reports: the first run of a commit gets seed 42, the next 43, and so on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testing.trainers import BASELINE_OFFSETS, write_noisy
from testing.workspace import JudgedWorkspace, Workspace, make_workspace


@pytest.fixture
def judged(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JudgedWorkspace:
    """judged(rule, margin_k=2, confirm_runs=2, noise_floor=0.0): an initialised workspace on
    autoresearch/t1 whose committed ground.json sets that keep rule, with the baseline train.py
    (base 1.0, BASELINE_OFFSETS) committed and not yet run; cwd inside."""

    def make(rule: str, margin_k: float = 2, confirm_runs: int = 2, noise_floor: float = 0.0) -> Workspace:
        ws = make_workspace(tmp_path / "ws")
        ground = json.loads((ws.root / "ground.json").read_text())
        ground["experiment"].update(keep_rule=rule, margin_k=margin_k, confirm_runs=confirm_runs,
                                    noise_floor=noise_floor)
        (ws.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
        write_noisy(ws, 1.0, BASELINE_OFFSETS)
        ws.git("commit", "-q", "-am", "policy and baseline trainer")
        monkeypatch.chdir(ws.root)
        proc = ws.gitar("init", "t1")
        assert proc.returncode == 0, proc.stderr
        return ws

    return make
