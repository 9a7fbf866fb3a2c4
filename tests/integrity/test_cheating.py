"""The shortcuts an agent finds, each tried with the real train.py on the CPU preset, and what gitar records.

The cheat also trains honestly and, as a witness for the test, prints the unpatched evaluation
of the model it trained: the harness must record exactly that, whatever the cheat claimed. The
leaks are caught by the causality probe. Each real run costs about a minute on two busy cores,
so there are three: the baseline (the fixture), the cheat, the leak; tests/integrity/test_export.py
covers each leak and the export on tiny models in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from testing.measured import BRANCH, Measured, edit_train, try_json

MAIN_START = '''    from prepare import GROUND, MAX_SEQ_LEN, PLATFORM, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader
'''


def test_the_baseline_is_measured_by_the_harness(measured: Measured) -> None:
    rec = measured.record
    assert rec["status"] == "keep" and rec["kind"] == "baseline"
    assert rec["val_bpb_source"] == "harness"
    val_bpb = float(rec["val_bpb"])  # type: ignore[arg-type]
    assert 1.0 < val_bpb < 4.0, val_bpb
    # One evaluation per run: train.py exports instead of evaluating (it cannot even see the
    # validation shard in its sandbox), so it reports no number of its own.
    assert "reported_val_bpb" not in rec
    assert str(rec["sandbox"]).startswith("bwrap ")
    evaluation = rec["evaluation"]
    assert isinstance(evaluation, dict)
    assert evaluation["causality"]["ok"] is True and evaluation["causality"]["max_diff"] == 0.0
    assert evaluation["causality"]["positions"] == 256  # every row of the 16 scored batches probed
    assert len(evaluation["program_sha256"]) == 64
    assert (evaluation["batch_size"], evaluation["seq_len"], evaluation["dtype"]) == (16, 256, "float32")
    assert isinstance(rec["data_sha256"], str) and len(rec["data_sha256"]) == 64
    log = Path(str(rec["log"])).read_text()
    assert "causality probe: ok" in log and "gitar.loop.evaluator" in log
    assert [line for line in log.splitlines() if line.startswith("val_bpb: ")] == [f"val_bpb: {val_bpb:.6f}"]
    # What the trainer wrote and the evaluator's copies do not outlive the run.
    assert not any((measured.ws.root / ".git" / "gitar" / "runs").iterdir())
    # Where the time went, by gitar's clock: the trainer as wall_seconds has it, then the evaluator.
    timings = rec["timings"]
    assert isinstance(timings, dict) and set(timings) == {"setup_s", "trainer_s", "handoff_s", "evaluator_s"}
    assert timings["trainer_s"] == rec["wall_seconds"] and timings["evaluator_s"] >= evaluation["seconds"]


def test_a_try_evaluates_once_in_the_harness_and_never_in_the_trainer(measured: Measured) -> None:
    """One evaluation per experiment: train.py exports instead of evaluating when gitar asks for the
    export, so the only evaluation is the harness's, in its own process after the trainer's."""
    ws = measured.ws
    edit_train(ws, ("SOFTCAP = 15.0  #", "SOFTCAP = 15.0  # (a comment: the same model, another commit)"))
    rec = try_json(ws, "a comment: the same model")
    assert rec["status"] in ("keep", "discard") and rec["val_bpb_source"] == "harness", rec
    assert "reported_val_bpb" not in rec
    log = Path(str(rec["log"])).read_text()
    trainer, *evaluators = log.split("gitar.loop.evaluator")
    assert len(evaluators) == 1, "the harness evaluation ran more or less than once"
    trainer_lines = trainer.splitlines()
    assert "Export: " in trainer and not any(line.startswith("Evaluation: ") for line in trainer_lines)
    assert not any(line.startswith("val_bpb") for line in trainer_lines), "train.py evaluated too"
    assert [line for line in log.splitlines() if line.startswith("val_bpb: ")] == [f"val_bpb: {rec['val_bpb']:.6f}"]


def test_printing_and_patching_a_better_number_changes_nothing(measured: Measured) -> None:
    """Both shortcuts in one run (each real run costs a minute on two cores): train.py rebinds the
    evaluation function, the eval token count and the token-bytes table in prepare, rewrites the
    snapshot's prepare.py on disk, and prints a fake val_bpb line of its own at the end."""
    ws = measured.ws
    cheat = MAIN_START.replace("    from prepare", "    import prepare as _p\n"
        "    _real_bytes, _real_eval = _p.get_token_bytes, _p.evaluate_bpb\n"
        "    _p.get_token_bytes = lambda device='cpu': _real_bytes(device) * 100  # 100x the bytes per token\n"
        "    _p.EVAL_TOKENS = _p.MAX_SEQ_LEN * 16  # one easy batch\n"
        "    _p.evaluate_bpb = lambda model, tokenizer, batch_size: _real_eval(model, tokenizer, batch_size) / 2\n"
        "    # and on disk: the snapshot's prepare.py measures nothing at all\n"
        "    _src = Path(_p.__file__).read_text()\n"
        "    Path(_p.__file__).write_text(_src.replace('return float(total_nats.item()', "
        "'return 0.0 * float(total_nats.item()'))\n"
        "    from prepare")
    # Local: the claim is patched into the real train.py, after its own summary, not a fake trainer's.
    fake = "    print('---')\n    print('val_bpb: 0.000001')\n"
    edit_train(ws, (MAIN_START, cheat),
               ('    print(f"seed: {seed}", flush=True)\n', '    print(f"seed: {seed}", flush=True)\n' + fake))
    rec = try_json(ws, "a better evaluation")
    assert rec["reported_val_bpb"] == 0.000001  # what the cheat claimed
    assert rec["val_bpb_source"] == "harness"
    assert "train.py printed val_bpb 0.000001 but the harness measured" in str(rec["reason"])
    # Recorded: the harness's number of a model like the baseline's (same code, same budget), not
    # the claim, and not the 1/200 that the patched evaluation would have given.
    baseline = float(measured.record["val_bpb"])  # type: ignore[arg-type]
    assert 0.8 * baseline < float(rec["val_bpb"]) < 1.25 * baseline, (rec["val_bpb"], baseline)  # type: ignore[arg-type]


def test_a_model_without_the_causal_mask_is_rejected(measured: Measured) -> None:
    ws = measured.ws
    edit_train(ws, ("window_size=(window, 0)",
                    "window_size=(window, -1)"))
    rec = try_json(ws, "attention without the mask")
    assert rec["status"] == "rejected" and "val_bpb" not in rec
    assert str(rec["reason"]).startswith("causality probe: logits at position ")
    assert "the model sees the future" in str(rec["reason"])
    assert ws.tip(BRANCH) == measured.baseline  # back at the best, as for a discard


def test_records_say_where_the_number_came_from(measured: Measured) -> None:
    line = json.dumps(measured.record)
    assert '"val_bpb_source": "harness"' in line and '"sandbox": "bwrap ' in line

