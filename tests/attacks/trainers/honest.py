"""An honest tiny trainer for the attack suite: a bigram model "trained" by counting.

It speaks train.py's protocol (step lines, the `---` summary block, the torch.export program
at $GITAR_EXPORT_PATH) and is deterministic: the same STEPS batches of the train split give
the same table whatever the seed, so every honest run of it scores the same val_bpb (to ~1e-7,
float noise) and a cheat that improves the number shows up as a number below that one. Counting takes
milliseconds, so an attack run costs only python, torch and the evaluator's start-up.

The attacks replace the hook functions below: the block that the suite inserts at the
ATTACK line (a file in this folder) redefines any of them before main() runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

STEPS = 8  # batches of the train split counted: the honest amount of training
BATCH = 16  # rows per training batch
SMOOTHING = 0.05  # added to every bigram count, so unseen pairs keep some probability


def on_start() -> None:
    """Runs first, before torch is imported."""


def train_split() -> str:
    return "train"


def keep_training(step: int, started: float, budget: float, steps: int) -> bool:
    """Whether to count another batch: the honest trainer counts `steps` (STEPS) batches."""
    return step < steps


def load_state(counts: Any) -> tuple[Any, int]:
    """The counts to start from and how many batches they already hold."""
    return counts, 0


def save_state(counts: Any, steps: int) -> None:
    """Called with the trained counts before the export."""


def reported_training_seconds(measured: float) -> float:
    return measured


def after_export(export_path: str) -> None:
    """Called once the model is saved for the harness."""


def on_end() -> None:
    """Runs after the summary block is printed."""


# ATTACK


def build_table(counts: Any) -> Any:
    import torch

    smoothed = counts + SMOOTHING
    return torch.log(smoothed / smoothed.sum(dim=1, keepdim=True))


def training_bpb(model: Any, tokenizer: Any, batch: int, seq_len: int) -> float:
    import prepare

    loader = prepare.make_dataloader(tokenizer, batch, seq_len, "train", device="cpu")
    x, y, _ = next(loader)
    loader.close()
    nats, nbytes = prepare.nats_and_bytes(model(x), y, prepare.get_token_bytes("cpu"))
    return float(nats.item()) / (math.log(2) * max(1, int(nbytes.item())))


def main() -> None:
    t_start = time.time()
    on_start()
    import torch

    import prepare

    torch.manual_seed(0)
    tokenizer = prepare.Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()
    seq_len = prepare.MAX_SEQ_LEN
    eval_batch = int(json.loads(Path("model.json").read_text())["evaluation"]["batch_size"])
    counts, done = load_state(torch.zeros((vocab, vocab), dtype=torch.float64))
    loader = prepare.make_dataloader(tokenizer, BATCH, seq_len, train_split(), device="cpu")
    for _ in range(done):  # batches the loaded state already counted
        next(loader)
    t_train = time.time()
    step = done
    while keep_training(step, t_train, prepare.TIME_BUDGET, STEPS):
        x, y, epoch = next(loader)
        counts.index_put_((x.reshape(-1), y.reshape(-1)), torch.ones(x.numel(), dtype=torch.float64),
                          accumulate=True)
        step += 1
        elapsed = time.time() - t_train
        print(f"step {step:05d} | loss 0.000000 | lrm 1.000 | dt 1ms | tok/s 1 | mfu 0.0% | epoch {epoch} "
              f"| train {elapsed:.1f}/{prepare.TIME_BUDGET:g}s", flush=True)
    loader.close()
    training_seconds = time.time() - t_train
    save_state(counts, step)

    model = torch.nn.Embedding.from_pretrained(build_table(counts).float(), freeze=True).eval()
    export_path = os.environ.get("GITAR_EXPORT_PATH")
    if export_path:
        example = torch.zeros((eval_batch, seq_len), dtype=torch.long)
        with torch.no_grad():
            program = torch.export.export(model, (example,))
        torch.export.save(program, export_path)
        after_export(export_path)
    with torch.no_grad():
        try:
            val_bpb = prepare.evaluate_bpb(model, tokenizer, eval_batch)
        except Exception as e:
            # A referee may hide the validation shard from the trainer (the harness measures the
            # export anyway): report the bits per byte of a training batch instead.
            print(f"own evaluation unavailable ({type(e).__name__}: {e}); reporting a training batch", flush=True)
            val_bpb = training_bpb(model, tokenizer, eval_batch, seq_len)
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {reported_training_seconds(training_seconds):.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print("peak_vram_mb:     0.0")
    print("mfu_percent:      0.00")
    print(f"total_tokens_M:   {step * BATCH * seq_len / 1e6:.3f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {vocab * vocab / 1e6:.1f}")
    print("depth:            1")
    print("device: cpu")
    print("dtype: float32")
    print("attention: none")
    print(f"seed: {os.environ.get('GITAR_SEED', '42')}", flush=True)
    on_end()


if __name__ == "__main__":
    sys.exit(main())
