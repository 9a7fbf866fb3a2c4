"""The fake, fast trainer of the loop tests.

The loop tests are about git, hooks and records, not the model: this trainer prints the
step lines and summary block train.py prints, with a val_bpb and a behaviour (ok, crash,
hang, ...) that each test writes into train.py itself.
"""

from __future__ import annotations

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
