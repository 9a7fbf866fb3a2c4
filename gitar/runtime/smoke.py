"""GITAR_SMOKE=1, gitar's pre-commit check: the agent's model and optimizer on the CPU in float32,
one optimizer step on random tokens, `smoke: ok loss=... params=...M`, and out.

It catches shape errors, typos and NaN-producing changes in seconds, before a change costs a
run: without the data, without a GPU, without TorchDynamo (nothing compiles in one eager step).
train.py builds the model and the optimizer (they are the research); this module is the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from gitar import shared
from gitar.runtime.allocator import keep_freed_memory
from gitar.runtime.crash import TrainingDiverged
from gitar.runtime.devices import skip_dynamo_import

SMOKE_BATCH, SMOKE_SEQ_LEN = 2, 64  # a batch small enough for any model on a laptop CPU


def requested() -> bool:
    """This run is the smoke step (gitar's preflight sets $GITAR_SMOKE=1)."""
    return os.environ.get(shared.SMOKE) == "1"


def cpu_for_smoke(seed: int) -> torch.device:
    """The process made ready for the smoke step, before the model is built: seeded (the same
    change gives the same line), glibc keeping freed blocks, no TorchDynamo import. The CPU."""
    torch.manual_seed(seed)
    keep_freed_memory()
    skip_dynamo_import()
    return torch.device("cpu")


def take_smoke_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, vocab_size: int, max_seq_len: int,
                    *, schedule: Callable[[], object], check_loss: Callable[[float, int], None]) -> None:
    """One step of model(x, y) -> loss on random tokens: check_loss on the loss, schedule() before
    optimizer.step() (as the training loop calls it), then every parameter must still be finite."""
    seq_len = min(SMOKE_SEQ_LEN, max_seq_len)
    x = torch.randint(0, vocab_size, (SMOKE_BATCH, seq_len))
    y = torch.randint(0, vocab_size, (SMOKE_BATCH, seq_len))
    loss = model(x, y)
    check_loss(loss.item(), 0)
    loss.backward()
    schedule()
    optimizer.step()
    # One sum per tensor: NaN or inf anywhere makes it non-finite, without a mask as large as the model.
    if not torch.stack([p.detach().float().sum() for p in model.parameters()]).isfinite().all():
        raise TrainingDiverged("a parameter is NaN/inf after one optimizer step: check the optimizer")
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{shared.SMOKE_OK} loss={loss.item():.4f} params={num_params / 1e6:.1f}M", flush=True)
