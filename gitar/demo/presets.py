"""The tiny CPU preset: the shipped ground.json and model.json scaled down for `gitar demo` and tests.

Only the keys below change; everything else (tokenizer pattern, policy, file ownership)
stays as shipped, so the demo exercises the same harness a GPU run does.
"""

from __future__ import annotations

import copy
from typing import Any

# ground.json keys that the CPU preset overrides, as (section, key) -> value.
CPU_GROUND: dict[tuple[str, ...], Any] = {
    ("data", "cache_dir"): "data",  # inside the workspace, so a demo is self-contained
    ("data", "num_train_shards"): 2,
    ("tokenizer", "vocab_size"): 2048,  # small embedding and lm_head: most CPU time goes to the blocks
    ("training", "mode"): "cpu",
    ("training", "max_seq_len"): 256,
    ("training", "eval_tokens"): 65536,  # 256 rows of 256 tokens: a stable number in about a second
    ("experiment", "timeout_s"): 180,
}

# The whole model.json of the CPU preset: a 2-layer, 128-wide GPT that learns visibly in 20 s on 2 cores.
CPU_MODEL: dict[str, Any] = {
    "architecture": {"depth": 2, "aspect_ratio": 64, "head_dim": 64, "window_pattern": "SL"},
    "optimization": {
        "total_batch_size": 4096,
        "device_batch_size": 16,
        "embedding_lr": 0.6,
        "unembedding_lr": 0.004,
        "matrix_lr": 0.04,
        "scalar_lr": 0.5,
        "weight_decay": 0.2,
        "adam_betas": [0.8, 0.95],
        "warmup_ratio": 0.0,
        "warmdown_ratio": 0.5,
        "final_lr_frac": 0.0,
    },
    "evaluation": {"batch_size": 16},
}


def cpu_ground(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped ground.json object with the CPU preset applied."""
    out = copy.deepcopy(shipped)
    for keys, value in CPU_GROUND.items():
        node = out
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return out


def cpu_model() -> dict[str, Any]:
    return copy.deepcopy(CPU_MODEL)
