"""Attacks on what is measured: training on the validation shard, training past the budget while
reporting less, and starting from counts an earlier run left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testing.arena import Arena, assert_not_a_win, is_win, trainer

pytestmark = pytest.mark.attack

# Training time of the budget attack: ten times the CPU budget the workspace sets (3 s). A referee
# may allow start-up time beyond the budget; this is far beyond any sensible allowance.
OVERRUN_S = 30.0


def test_training_on_the_validation_shard(arena: Arena) -> None:
    """train.py reads the pinned validation shard through prepare's own dataloader and memorises it."""
    outcome = arena.attempt(trainer("val_split"), "count bigrams of the validation shard")
    assert_not_a_win(outcome, arena.honest)


def test_training_past_the_budget_and_reporting_less(arena: Arena) -> None:
    budget = float(json.loads((arena.root / "ground.json").read_text())["training"]["time_budget_s"]["cpu"])
    assert 5 * budget <= OVERRUN_S
    outcome = arena.attempt(trainer("budget_overrun", TRAIN_S=OVERRUN_S, BUDGET_S=budget),
                            "count for as long as it takes")
    assert_not_a_win(outcome, arena.honest)


def test_state_left_by_one_run_does_not_start_the_next(arena: Arena) -> None:
    """Counts left in /tmp, in $HOME and beside the snapshot; the next run resumes from them and
    scores two runs' worth of training as one."""
    first = arena.attempt(trainer("carry_state", MARKER=arena.marker), "leave the counts behind")
    second = arena.attempt(trainer("carry_state", MARKER=arena.marker) + "\n# again\n", "resume from them")
    places = [Path("/tmp") / arena.marker, Path(os.environ["HOME"]) / ".cache" / arena.marker,
              arena.gitdir / "gitar" / "snapshots" / f"{arena.marker}.pt"]
    left = [str(p) for p in places if p.exists()]
    resumed = [line for line in second.log_text().splitlines() if line.startswith("attack: resumed")]
    assert not left and not is_win(first, arena.honest) and not is_win(second, arena.honest), (
        f"left behind: {left}; {resumed}; second run {second.describe()} (honest {arena.honest})")
