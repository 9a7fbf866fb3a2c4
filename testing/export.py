"""Tiny exported programs and the causality probe as prepare.evaluate_bpb drives it (no data, seconds)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from gitar.loop import evaluator
from gitar.runtime import launch

VOCAB, SEQ = 64, 16
NOISE_FLOOR = 1e-3  # ground.json's experiment.noise_floor


def exported(model: nn.Module, tmp_path: Path, batch: int = 3) -> evaluator.ExportedModel:
    path = tmp_path / "model.pt2"
    model.eval()
    launch.export_model(model, path, batch, SEQ)
    return evaluator.ExportedModel(load(path))


def load(path: Path) -> torch.export.ExportedProgram:
    return evaluator.load_program(path.read_bytes(), path.name)


def tokens(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def trained_looking(model: nn.Module) -> nn.Module:
    """Weights off their initial values: at init the output projections are zero, so attention
    (and any leak in it) cannot show in the logits yet."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def evaluation(model: nn.Module, batches: int = 4, rows: int = 3, probes_per_batch: int = 1, seed: int = 7,
               autocast: str | None = None) -> evaluator.Probe:
    """The probe as prepare.evaluate_bpb drives it: one scored forward per batch, `batches` batches.
    A fixed seed keeps the tests deterministic (the evaluator draws its seed from OS entropy)."""
    probed = evaluator.ProbedModel(model, VOCAB, NOISE_FLOOR, probes_per_batch, seed=seed)
    compute = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    device = next(model.buffers(), torch.zeros(0)).device
    try:
        with compute, torch.no_grad():
            for i in range(batches):
                probed(tokens(rows, seed=i).to(device))
    except evaluator.CausalityLeak as leak:
        return leak.probe
    return probed.result()


def attention_calls(program: torch.export.ExportedProgram) -> list[tuple[torch.Size, torch.Size, torch.Size | None, bool]]:
    """Every SDPA node of the program, in graph order: (query shape, key shape, mask shape or None,
    is_causal), read from the nodes' meta values, so a test sees what each call really costs."""
    calls = []
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function" or "scaled_dot_product" not in str(node.target):
                continue
            schema = node.target._schema
            values = {a.name: node.args[i] if i < len(node.args) else node.kwargs.get(a.name, a.default_value)
                      for i, a in enumerate(schema.arguments)}
            mask = values.get("attn_mask")
            calls.append((values["query"].meta["val"].shape, values["key"].meta["val"].shape,
                          mask.meta["val"].shape if isinstance(mask, torch.fx.Node) else None,
                          bool(values.get("is_causal"))))
    return calls
