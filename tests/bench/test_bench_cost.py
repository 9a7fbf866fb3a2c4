"""benchmarks/bench_cost.py: how it takes a `gitar try` and an upstream-style run apart (no timing asserted)."""

from __future__ import annotations

import pytest

from benchmarks import bench_cost

TRAINER_LOG = """[gitar] 2026-12-01 18:23:29 run python train.py in /snap (timeout 140 s; sandbox bwrap 0.8.0)
cpu float32 sdpa eager
step 00000 | loss 7.6 | lrm 1.000 | dt 1718ms | tok/s 2384 | mfu 0.0% | epoch 1 | train 0.0/20s
Startup: 2.5s
Training loop: 30.0s
Export: 3.0s
---
training_seconds: 21.0
total_seconds: 35.5
[gitar] ok, exit 0, 38.0 s
[gitar] 2026-12-01 18:24:28 run python -m gitar.loop.evaluator --workspace /eval
---
val_bpb: 2.437260
"""


def test_a_try_is_taken_apart_into_phases_that_add_up_to_its_wall_time() -> None:
    record = {"started": "2026-12-01T18:23:29.000+00:00",
              "timings": {"smoke_s": 4.0, "setup_s": 0.5, "trainer_s": 38.0, "handoff_s": 0.25, "evaluator_s": 10.0}}
    t0 = 1_796_149_400.0  # 2026-12-01T18:23:20 UTC: 9 s before the trainer started
    phases = bench_cost.gitar_phases(t0, 60.0, record, TRAINER_LOG)
    assert phases["smoke_s"] == 4.0 and phases["setup_s"] == 0.5
    assert phases["cli_s"] == pytest.approx(9.0 - 4.0 - 0.5)
    assert phases["interpreter_s"] == pytest.approx(38.0 - 35.5)  # the trainer process beyond train.py's own clock
    assert (phases["startup_s"], phases["warmup_s"], phases["training_s"]) == (2.5, pytest.approx(9.0), 21.0)
    assert phases["finish_s"] == pytest.approx(35.5 - 2.5 - 30.0)
    assert phases["bookkeeping_s"] == pytest.approx(60.0 - 9.0 - 38.0 - 0.25 - 10.0)
    assert sum(v for k, v in phases.items() if k != "wall_s") == pytest.approx(60.0)
    assert bench_cost.outside_training(phases) == pytest.approx(39.0)


def test_an_upstream_run_reads_the_trainers_own_evaluation() -> None:
    log = TRAINER_LOG.replace("Export: 3.0s", "Evaluation: 3.0s")
    phases = bench_cost.upstream_phases(0.1, 38.0, log, 0.05, 0.2)
    assert phases["finish_s"] == pytest.approx(3.0) and phases["wall_s"] == pytest.approx(38.35)
    assert bench_cost.trainer_lines(log)["val_bpb"] == 2.43726


def test_a_train_py_without_the_timing_lines_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="lacks finish, loop"):
        bench_cost.trainer_lines(TRAINER_LOG.replace("Training loop: 30.0s\nExport: 3.0s\n", ""))


def test_the_projection_and_the_table() -> None:
    assert bench_cost.training_share(300, 25.9) == pytest.approx(bench_cost.UPSTREAM_SHARE)
    g = {k: 1.0 for k, _ in bench_cost.GITAR_PHASES} | {"training_s": 20.0, "wall_s": 40.0}
    u = {k: 1.0 for k, _ in bench_cost.UPSTREAM_PHASES} | {"training_s": 20.0, "wall_s": 30.0}
    text = bench_cost.table([g], [u], 300)
    assert "ratio outside training, gitar / upstream: 2.00x" in text
    assert "gitar 93.8 %" in text and "upstream-style here 96.8 %" in text
    assert "training): gitar 7.00 s, upstream 4.00 s" in text  # the trainer's shared phases left out
