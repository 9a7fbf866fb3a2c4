"""The repository's train.py as small models, for tests that need a real GPT without training it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import train
from gitar.demo.presets import cpu_model


def model_cfg(**arch: Any) -> Any:
    """A ModelConfig from the CPU preset, with architecture keys overridden."""
    obj = cpu_model()
    obj["architecture"].update(arch)
    return train.parse_model(obj, Path("model.json"))


def tiny_gpt(vocab_size: int = 64, sequence_len: int = 16, seed: int = 0, **arch: Any) -> train.GPT:
    arch = {"depth": 3, "aspect_ratio": 16, "head_dim": 16, "window_pattern": "SL", **arch}
    config = train.gpt_config(model_cfg(**arch).architecture, vocab_size, sequence_len, "sdpa")
    torch.manual_seed(seed)
    return train.build_model(config, torch.device("cpu"))
