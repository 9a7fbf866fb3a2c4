"""Workspaces for the keep-rule tests: a fake trainer whose noise is a table indexed by seed.

The real loop runs (git, the pre-commit hooks, `gitar run`/`gitar try`), and each run's
val_bpb is BASE + OFFSETS[GITAR_SEED], so a test knows exactly which number every run of
a commit reports: the first run of a commit gets seed 42, the next 43, and so on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from testing.workspace import Workspace, make_workspace

NOISY_TRAIN = '''\
"""A stand-in trainer: val_bpb is a base value plus a noise offset looked up by seed."""
import os, sys, time
BASE = {base!r}
OFFSETS = {offsets!r}  # by GITAR_SEED; seeds not listed add nothing
CRASH_SEEDS = {crash_seeds!r}
SLEEP_S = {sleep_s!r}
if os.environ.get("GITAR_SMOKE") == "1":
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
seed = int(os.environ["GITAR_SEED"])
print("step 00000 | loss 3.000000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train 0.0/1s", flush=True)
time.sleep(SLEEP_S)
if seed in CRASH_SEEDS:
    raise RuntimeError(f"diverged with seed {{seed}} (fake)")
print("---")
print(f"val_bpb:          {{BASE + OFFSETS.get(seed, 0.0):.6f}}")
print("training_seconds: 1.0")
print("total_seconds:    1.5")
print("num_steps:        1")
print(f"seed: {{seed}}")
'''

# Run-to-run noise of the baseline: seed 42 is lucky, so a change that does nothing wins its first run.
BASELINE_OFFSETS = {42: -0.001, 43: 0.003, 44: -0.002}
# Over those three runs: mean 1.0, sample std sqrt(14e-6 / 2).
BASELINE_STD = (14e-6 / 2) ** 0.5


def write_noisy(ws: Workspace, base: float, offsets: dict[int, float] | None = None, *,
                crash_seeds: tuple[int, ...] = (), sleep_s: float = 0.0, note: str = "") -> None:
    """train.py for the next commit; `note` makes a change that does nothing (a null change)."""
    text = NOISY_TRAIN.format(base=base, offsets=dict(offsets or {}), crash_seeds=set(crash_seeds),
                              sleep_s=sleep_s)
    (ws.root / "train.py").write_text(text + (f"# {note}\n" if note else ""))


def ok(proc: object) -> str:
    return f"stdout={getattr(proc, 'stdout', '')!r} stderr={getattr(proc, 'stderr', '')!r}"


JudgedWorkspace = Callable[..., Workspace]


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
