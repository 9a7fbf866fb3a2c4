"""The fake, fast trainers of the loop tests.

The loop tests are about git, hooks and records, not the model: these trainers print the
step lines and summary block train.py prints, with a val_bpb and a behaviour (ok, crash,
hang, ...) that each test writes into train.py itself. Every one of them prints its summary
block through summary_lines, the one place that lays the block out.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # testing/workspace.py imports this module
    from testing.workspace import Workspace


def summary_lines(values: dict[str, object]) -> list[str]:
    """train.py's summary block: "---", then a `key: value` line a key, the values in one column.

    The fake trainers run this very function (its source is part of theirs, see SUMMARY_SOURCE),
    so a test that writes a summary of its own (tests/core/test_runner.py) lays it out the same way.
    """
    return ["---", *(f"{key + ':':<17} {value}" for key, value in values.items())]


# summary_lines as the trainers define it: their summary block comes from the same code.
SUMMARY_SOURCE = inspect.getsource(summary_lines)

# The values of the fake trainer's summary after val_bpb (and before seed, which comes from GITAR_SEED).
FAKE_SUMMARY: dict[str, object] = {
    "training_seconds": "1.0", "total_seconds": "1.5", "peak_vram_mb": "1024.0", "mfu_percent": "12.50",
    "total_tokens_M": "0.1", "num_steps": 3, "num_params_M": "0.1", "depth": 2, "device": "cpu",
    "dtype": "float32", "attention": "sdpa", "bytes_rule": "utf8-decoded",
}

# The smoke refusal's raise stays on line 8: tests/core/test_preflight.py names that frame exactly.
FAKE_TRAIN = '''\
"""A stand-in trainer for loop tests: same output shape as train.py, controlled result."""
import json, os, sys, time
VAL_BPB = {val_bpb!r}
MODE = {mode!r}  # ok | crash | hang | nosummary | smoke-fail | sleep | staged
SLEEP_S = {sleep_s!r}
if os.environ.get("GITAR_SMOKE") == "1":
    if MODE == "smoke-fail":
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (2x64 and 128x64)")
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
from pathlib import Path  # for a test's body
SUMMARY = {summary!r}
{summary_source}
def step(n, train_s):
    print(f"step {{n:05d}} | loss 3.{{n}}00000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train {{train_s:.1f}}/1s",
          flush=True)
def wait(name):
    # staged: the test moves the trainer on by writing `name` into its snapshot (its working directory)
    while not os.path.exists(name):
        time.sleep(0.05)
if MODE == "staged":
    wait("go-warmup")
    step(0, 0.0)
    step(1, 0.0)
    wait("go-train")
    step(2, 0.5)
    wait("go-done")
    step(3, 1.0)
    wait("go-end")
else:
    for n in range(3):
        step(n, n * 0.1)
{body}
if MODE == "sleep":
    time.sleep(SLEEP_S)
if MODE == "crash":
    crash = os.environ.get("GITAR_CRASH_FILE")
    if crash:
        with open(crash, "w") as f:
            json.dump({{"type": "RuntimeError", "message": "CUDA error: out of memory (fake)", "traceback": ["line 1"], "phase": "train"}}, f)
    raise RuntimeError("CUDA error: out of memory (fake)")
if MODE == "hang":
    print("hanging", flush=True)  # tests find this process through /proc (trainer_processes)
    time.sleep(600)
if MODE == "nosummary":
    sys.exit(0)
print("\\n".join(summary_lines({{"val_bpb": f"{{VAL_BPB:.6f}}", **SUMMARY, "seed": os.environ.get("GITAR_SEED", "42")}})),
      flush=True)
'''


def fake_train(val_bpb: float = 1.0, mode: str = "ok", sleep_s: float = 0.0, *, body: str = "",
               summary: dict[str, object] | None = None) -> str:
    """The fake trainer's source. `body`: Python it runs after its steps (what a test makes it do to
    the run); `summary`: summary values in place of FAKE_SUMMARY's, or added after them."""
    return FAKE_TRAIN.format(val_bpb=val_bpb, mode=mode, sleep_s=sleep_s, summary={**FAKE_SUMMARY, **(summary or {})},
                             summary_source=SUMMARY_SOURCE, body=body)


# The keep-rule tests' trainer (tests/judge): its noise is a table indexed by seed, so a test knows
# exactly which number every run of a commit reports (the first run of a commit gets seed 42, then 43, ...).
NOISY_TRAIN = '''\
"""A stand-in trainer: val_bpb is a base value plus a noise offset looked up by seed."""
import os, sys, time
BASE = {base!r}
OFFSETS = {offsets!r}  # by GITAR_SEED; seeds not listed add nothing
CRASH_SEEDS = {crash_seeds!r}
SLEEP_S = {sleep_s!r}
{summary_source}
if os.environ.get("GITAR_SMOKE") == "1":
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
seed = int(os.environ["GITAR_SEED"])
print("step 00000 | loss 3.000000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train 0.0/1s", flush=True)
time.sleep(SLEEP_S)
if seed in CRASH_SEEDS:
    raise RuntimeError(f"diverged with seed {{seed}} (fake)")
print("\\n".join(summary_lines({{"val_bpb": f"{{BASE + OFFSETS.get(seed, 0.0):.6f}}", "training_seconds": "1.0",
                                "total_seconds": "1.5", "num_steps": 1, "seed": seed}})), flush=True)
'''

# Run-to-run noise of the baseline: seed 42 is lucky, so a change that does nothing wins its first run.
BASELINE_OFFSETS = {42: -0.001, 43: 0.003, 44: -0.002}
# Over those three runs: mean 1.0, sample std sqrt(14e-6 / 2).
BASELINE_STD = (14e-6 / 2) ** 0.5


def write_noisy(ws: Workspace, base: float, offsets: dict[int, float] | None = None, *,
                crash_seeds: tuple[int, ...] = (), sleep_s: float = 0.0, note: str = "") -> None:
    """train.py for the next commit; `note` makes a change that does nothing (a null change)."""
    text = NOISY_TRAIN.format(base=base, offsets=dict(offsets or {}), crash_seeds=set(crash_seeds),
                              sleep_s=sleep_s, summary_source=SUMMARY_SOURCE)
    (ws.root / "train.py").write_text(text + (f"# {note}\n" if note else ""))


# The fault suite's trainer (tests/faults): fails on cue the way train.py fails; see testing/faults.py.
FAULT_TRAIN = '''\
"""A stand-in trainer for the fault suite: fails on cue the way train.py fails."""
import json, math, os, resource, subprocess, sys, time, traceback
MODE = {mode!r}
VAL_BPB = {val_bpb!r}
WAIT = {wait!r}
if os.environ.get("GITAR_SMOKE") == "1":
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
STATE = os.path.dirname(os.environ["GITAR_CRASH_FILE"])


{summary_source}

class TrainingDiverged(RuntimeError):
    """train.py's fast fail on a NaN/inf loss (check_loss)."""


class OutOfMemoryError(RuntimeError):
    """What torch.OutOfMemoryError looks like to a crash record."""


def write_crash_record(exc):
    # train.py's write_crash_record: type, message, traceback, phase, step; atomic.
    path = os.environ.get("GITAR_CRASH_FILE")
    if not path:
        return
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({{"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": lines[-20:],
                   "phase": "train", "step": 3}}, f)
    os.replace(tmp, path)


def main():
    # A data-loader worker: same process group, not a direct concern of the trainer's exit.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tmp = os.path.join(STATE, "pids.json.tmp")
    with open(tmp, "w") as f:
        json.dump({{"trainer": os.getpid(), "child": child.pid, "pgid": os.getpgrp()}}, f)
    for step in range(3):
        print(f"step {{step:05d}} | loss 3.{{step}}00000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train {{step * 0.1:.1f}}/1s", flush=True)
    os.replace(tmp, os.path.join(STATE, "pids.json"))
    deadline = time.time() + 60
    while WAIT and not os.path.exists(os.path.join(STATE, "go")) and time.time() < deadline:
        time.sleep(0.02)
    if MODE == "sleep":
        time.sleep(60)
    elif MODE == "hang":
        time.sleep(600)
    elif MODE == "crash":
        raise RuntimeError("a bug in the new attention code (fake)")
    elif MODE == "nan":
        loss = float("nan")
        if not math.isfinite(loss):  # train.py's check_loss, verbatim message
            raise TrainingDiverged(f"training loss is {{loss}} at step {{3}} (limit {{100.0:g}}): the run diverged; "
                                   "lower the learning rates in model.json or fix the model")
    elif MODE == "nan-summary":
        pass  # exits 0 with val_bpb nan below
    elif MODE == "oom":
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                               "of 79.10 GiB of which 1.19 GiB is free.")
    elif MODE == "oom-rlimit":
        # A real allocation failure: the address space is capped well below what is asked for.
        limit = 512 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hoard = bytearray(2 * limit)
        print(len(hoard))
    elif MODE == "flood":
        # The log outgrows what its volume can take (the test caps file sizes with RLIMIT_FSIZE).
        line = "step 00003 | loss 3.000000 | " + "x" * 200
        for _ in range(100000):
            print(line, flush=True)
    val_bpb = float('nan') if MODE == 'nan-summary' else VAL_BPB
    print("\\n".join(summary_lines({{"val_bpb": f"{{val_bpb:.6f}}", "training_seconds": "1.0", "total_seconds": "1.5",
                                    "peak_vram_mb": "1024.0", "num_steps": 3, "depth": 2,
                                    "seed": os.environ.get("GITAR_SEED", "42")}})), flush=True)


def run():
    # train.py's run(): a crash leaves a record and a traceback, and exits 1.
    try:
        main()
    except Exception as e:
        write_crash_record(e)
        traceback.print_exc()
        if isinstance(e, OutOfMemoryError):
            print("hint: out of GPU memory; lower optimization.device_batch_size in model.json", file=sys.stderr)
        return 1
    return 0


sys.exit(run())
'''

def fault_train(mode: str = "ok", val_bpb: float = 1.0, *, wait: bool = False) -> str:
    return FAULT_TRAIN.format(mode=mode, val_bpb=val_bpb, wait=wait, summary_source=SUMMARY_SOURCE)
