"""The harness and the evaluation data are pinned: what changes them is rejected, never trained.

These runs stop before training or right after a stand-in trainer, so they take seconds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from testing.measured import BRANCH, Measured, try_json
from testing.trainers import fake_train


def stand_in(ws_root: Path, body: str) -> None:
    """A stand-in train.py (the fake trainer) that prints the summary block and, before it, does
    `body` to the run's integrity."""
    (ws_root / "train.py").write_text(fake_train(0.5, body=body, summary={"num_steps": 1}))


def test_a_changed_prepare_py_committed_past_the_hooks_is_rejected_untrained(measured: Measured) -> None:
    ws = measured.ws
    prepare = ws.root / "prepare.py"
    prepare.write_text(prepare.read_text().replace("EVAL_CHUNK_ROWS = 4", "EVAL_CHUNK_ROWS = 4  # tuned"))
    # --no-verify skips the pre-commit guard; the post-commit hook still runs the experiment.
    ws.git("commit", "-q", "--no-verify", "-am", "evaluate more kindly")
    [rec] = [r for r in ws.all_records() if r["description"] == "evaluate more kindly"]
    assert rec["status"] == "rejected"
    assert rec["reason"] == (f"harness differs from the branch base {measured.baseline[:7]}: prepare.py changed; "
                             "experiments may change only the agent-owned files")
    assert "training_seconds" not in rec and "log" not in rec and "val_bpb" not in rec  # never trained
    assert rec["harness_sha256"] != measured.record["harness_sha256"]
    assert ws.tip(BRANCH) == measured.baseline  # moved back like a discard


def test_evaluation_data_changed_between_runs_is_rejected_untrained(measured: Measured) -> None:
    ws = measured.ws
    token_bytes = ws.root / "cache" / "tokenizer" / "token_bytes.pt"
    token_bytes.write_bytes(token_bytes.read_bytes() + b"\0")
    proc = ws.gitar("run", "--json")
    rec = json.loads(proc.stdout)
    assert proc.returncode == 1 and rec["status"] == "rejected"
    assert rec["reason"].startswith(f"evaluation data differs from what {BRANCH} was first measured on: "
                                    "tokenizer/token_bytes.pt changed")
    assert "training_seconds" not in rec


def test_train_py_cannot_rewrite_the_validation_shard(measured: Measured) -> None:
    """Inside its sandbox the cache holds no validation shard, and what train.py writes there
    lands in a private tmpfs: the real shard is untouched and the run measured as usual."""
    ws = measured.ws
    val_shard = f"shard_{json.loads((ws.root / 'ground.json').read_text())['data']['val_shard']:05d}.parquet"
    real = ws.root / "cache" / "data" / val_shard
    before = hashlib.sha256(real.read_bytes()).hexdigest()
    stand_in(ws.root, f"shard = Path(os.environ['GITAR_WORKSPACE']) / 'cache' / 'data' / {val_shard!r}\n"
                      "print('visible' if shard.exists() else 'absent', flush=True)\n"
                      "shard.write_bytes(b'PAR1 easier text PAR1')\n"
                      "Path(os.environ['GITAR_EXPORT_PATH']).write_bytes(b'not a model')")
    rec = try_json(ws, "rewrite the validation shard")
    assert hashlib.sha256(real.read_bytes()).hexdigest() == before
    assert "absent" in Path(str(rec["log"])).read_text()
    # Judged on what it exported (here: nothing loadable), not on any change to the data.
    assert rec["status"] == "crash" and "could not be loaded" in str(rec["reason"])


def test_evaluation_data_changed_during_the_run_is_rejected(measured: Measured) -> None:
    """Something outside the sandbox (the agent's own shell) rewrites the shard while train.py
    runs: gitar hashes each evaluation file as it copies it for the evaluator, after training."""
    ws = measured.ws
    val_shard = f"shard_{json.loads((ws.root / 'ground.json').read_text())['data']['val_shard']:05d}.parquet"
    stand_in(ws.root, "import time\nprint('waiting', flush=True)\ntime.sleep(4)\n"
                      "Path(os.environ['GITAR_EXPORT_PATH']).write_bytes(b'not a model')")
    ws.git("add", "train.py")
    proc = subprocess.Popen([sys.executable, "-m", "gitar", "try", "a shard rewritten meanwhile", "--json"],
                            cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = ws.root / ".git" / "gitar" / "logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("waiting" in p.read_text(errors="replace")
                                                     for p in logs.glob("*.log")):
        time.sleep(0.05)
    (ws.root / "cache" / "data" / val_shard).write_bytes(b"PAR1 easier text PAR1")
    out, err = proc.communicate(timeout=300)
    rec = json.loads(out)
    assert rec["status"] == "rejected", (out, err)
    assert rec["reason"].startswith(f"evaluation data changed during the run: data/{val_shard} in ")
    assert rec["reported_val_bpb"] == 0.5 and "val_bpb" not in rec


def test_a_train_py_that_does_not_export_is_a_crash_with_the_reason(measured: Measured) -> None:
    ws = measured.ws
    stand_in(ws.root, "")
    rec = try_json(ws, "no export")
    assert rec["status"] == "crash" and "val_bpb" not in rec
    assert rec["error"]["type"] == "NoExport"  # type: ignore[index]
    assert "train.py did not export its model for the harness evaluation" in rec["reason"]


def test_an_export_the_evaluator_cannot_load_is_a_crash(measured: Measured) -> None:
    ws = measured.ws
    stand_in(ws.root, "Path(os.environ['GITAR_EXPORT_PATH']).write_bytes(b'not a model')")
    rec = try_json(ws, "a broken export")
    assert rec["status"] == "crash"
    assert str(rec["reason"]).startswith("GitarError: the harness evaluation failed: the exported model ")
    assert "could not be loaded" in str(rec["reason"])


def test_init_twice_keeps_the_base_and_a_new_branch_gets_its_own(measured: Measured) -> None:
    ws = measured.ws
    base_ref = f"refs/gitar/base/{BRANCH}"
    assert ws.git("rev-parse", base_ref).stdout.strip() == measured.baseline
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.git("rev-parse", base_ref).stdout.strip() == measured.baseline
    ws.git("switch", "-q", "-c", "elsewhere", measured.baseline)
    (ws.root / "program.md").write_text("# program, revised\n")
    ws.git("commit", "-qam", "a new program")
    assert ws.gitar("init", "t2").returncode == 0
    assert ws.git("rev-parse", "refs/gitar/base/autoresearch/t2").stdout.strip() == ws.head()


def test_the_running_state_goes_through_gitars_phases_with_their_deadlines(measured: Measured) -> None:
    """The real train.py and the harness evaluation: each phase written by gitar as it enters it,
    the trainer's and the evaluator's own hard deadlines, and no phase taken from the trainer's log."""
    from gitar.host.state import PHASES

    ws = measured.ws
    source = (ws.root / "train.py").read_text()
    assert source.count("EXCLUDED_STEPS = 10") == 1
    (ws.root / "train.py").write_text(source.replace("EXCLUDED_STEPS = 10", "EXCLUDED_STEPS = 1"))  # quicker
    proc = ws.gitar("try", "fewer warm-up steps", "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    running = ws.root / ".git" / "gitar" / "running.json"
    seen: list[tuple[str, float | None]] = []
    deadline = time.time() + 280
    while time.time() < deadline:
        try:
            state = json.loads(running.read_text())
        except (FileNotFoundError, ValueError):
            if seen:
                break  # the record is written: the run is over
            time.sleep(0.02)
            continue
        if not seen or seen[-1][0] != state["phase"]:
            seen.append((state["phase"], state["deadline"]))
        time.sleep(0.02)
    phases = [p for p, _ in seen]
    assert phases[0] in ("start-up", "training") and set(phases) <= set(PHASES), phases
    assert phases == sorted(phases, key=PHASES.index), phases  # in gitar's order, none twice
    assert "training" in phases and "evaluation" in phases, phases
    done = json.loads(ws.gitar("wait", "--json").stdout)
    assert done["status"] in ("keep", "discard"), done
    times = dict(seen)
    trainer, evaluator = times["training"], times["evaluation"]
    # The evaluator gets what the trainer left of experiment.timeout_s, not a fresh timeout_s.
    assert trainer is not None and evaluator is not None, seen
    assert trainer <= evaluator < trainer + float(done["wall_seconds"]), (seen, done["wall_seconds"])
