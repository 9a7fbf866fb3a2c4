"""The fake, fast trainer of the loop tests.

The loop tests are about git, hooks and records, not the model: this trainer prints the
step lines and summary block train.py prints, with a val_bpb and a behaviour (ok, crash,
hang, ...) that each test writes into train.py itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # testing/workspace.py imports this module
    from testing.workspace import Workspace

FAKE_TRAIN = '''\
"""A stand-in trainer for loop tests: same output shape as train.py, controlled result."""
import json, os, sys, time
VAL_BPB = {val_bpb!r}
MODE = {mode!r}  # ok | crash | hang | nosummary | smoke-fail | sleep
SLEEP_S = {sleep_s!r}
if os.environ.get("GITAR_SMOKE") == "1":
    if MODE == "smoke-fail":
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (2x64 and 128x64)")
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
for step in range(3):
    print(f"step {{step:05d}} | loss 3.{{step}}00000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train {{step * 0.1:.1f}}/1s", flush=True)
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
print("---")
print(f"val_bpb:          {{VAL_BPB:.6f}}")
print("training_seconds: 1.0")
print("total_seconds:    1.5")
print("peak_vram_mb:     1024.0")
print("mfu_percent:      12.50")
print("total_tokens_M:   0.1")
print("num_steps:        3")
print("num_params_M:     0.1")
print("depth:            2")
print("device: cpu")
print("dtype: float32")
print("attention: sdpa")
print("bytes_rule: utf8-decoded")
print("seed: " + os.environ.get("GITAR_SEED", "42"))
'''


def fake_train(val_bpb: float = 1.0, mode: str = "ok", sleep_s: float = 0.0) -> str:
    return FAKE_TRAIN.format(val_bpb=val_bpb, mode=mode, sleep_s=sleep_s)


# The keep-rule tests' trainer (tests/judge): its noise is a table indexed by seed, so a test knows
# exactly which number every run of a commit reports (the first run of a commit gets seed 42, then 43, ...).
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
