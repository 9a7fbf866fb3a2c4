"""The evaluator's command line on a prepared CPU-preset workspace: every scored batch probed, the bytes hashed.

The README's figure for the CPU preset comes from here: 65536 eval tokens in rows of 256, 16
rows a batch, so 16 batches and 256 probe rows, and a leak at 5.3 % of positions is caught
with probability >= 1 - 1e-6.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gitar.runtime import launch
from testing.export import trained_looking
from testing.hermetic import REPO_ROOT, env_without_gitar
from testing.model import tiny_gpt

BATCH = 16  # the CPU preset's evaluation.batch_size


def run_evaluator(workspace: Path, program: Path, out: Path) -> dict[str, Any]:
    env = env_without_gitar() | {"PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "gitar.loop.evaluator", "--workspace", str(workspace),
                           "--program", str(program), "--out", str(out)],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def shape(workspace: Path) -> tuple[int, int, int]:
    ground = json.loads((workspace / "ground.json").read_text())
    return ground["tokenizer"]["vocab_size"], ground["training"]["max_seq_len"], ground["training"]["eval_tokens"]


def test_an_honest_export_is_measured_with_every_batch_probed(prepared_workspace: Path, tmp_path: Path) -> None:
    vocab, seq, eval_tokens = shape(prepared_workspace)
    path = tmp_path / "model.pt2"
    launch.export_model(trained_looking(tiny_gpt(vocab, seq)).eval(), path, BATCH, seq)
    result = run_evaluator(prepared_workspace, path, tmp_path / "result.json")
    assert "rejected" not in result and result["val_bpb"] > 0
    assert result["program_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result["bytes_rule"] == "utf8-decoded"  # upstream's token bytes, named in the record
    probe = result["causality"]
    batches = eval_tokens // (BATCH * seq)
    assert (probe["ok"], probe["max_diff"], probe["batches"], probe["positions"]) == (True, 0.0, batches, batches * BATCH)
    assert abs(probe["detects_leak_fraction"] - 0.0526) < 1e-4  # the README's CPU-preset figure
    assert probe["tolerance"] == 1e-3 * 0.6931471805599453  # ground.json's noise floor x ln 2


class Peeking(nn.Module):
    """Every position sees the next token: caught by the first probe row."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)
        self.vocab = vocab

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x) + 3.0 * torch.nn.functional.one_hot(torch.roll(x, shifts=-1, dims=1), self.vocab).float()


def test_a_leak_is_rejected_with_where_it_was_seen(prepared_workspace: Path, tmp_path: Path) -> None:
    vocab, seq, _ = shape(prepared_workspace)
    path = tmp_path / "model.pt2"
    with torch.no_grad():
        torch.export.save(torch.export.export(Peeking(vocab).eval(), (torch.zeros(BATCH, seq, dtype=torch.long),)), path)
    result = run_evaluator(prepared_workspace, path, tmp_path / "result.json")
    assert "val_bpb" not in result
    probe = result["causality"]
    assert (probe["ok"], probe["batches"], probe["positions"]) == (False, 1, BATCH)  # stops at the first leak
    assert probe["position"] == probe["changed_after"]
    assert str(result["rejected"]).startswith(f"causality probe: logits at position {probe['position']} change when "
                                              f"the tokens after position {probe['position']} change (the model "
                                              "sees the future; log-probability change ")
