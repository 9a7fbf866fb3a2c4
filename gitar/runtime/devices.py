"""The processor a training run uses, set up from the Platform prepare.py detected (platform.py).

What train.py's loop needs of the device and the number format, and nothing of the model: the
torch device, autocast, the GradScaler of fp16 machines, the dtype the embeddings are stored in,
whether to compile, the precision of Muon's orthogonalisation, and a synchronize so that a step's
time is the time its kernels took. None of it changes what a step computes on a given machine.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gitar.runtime.allocator import keep_freed_memory
from gitar.runtime.platform import Platform


def skip_dynamo_import() -> None:
    """Eager runs: build the optimizer without importing TorchDynamo (~2 s of CPU per process).

    torch.optim.Optimizer's add_param_group, zero_grad, state_dict and load_state_dict are
    wrapped by torch._disable_dynamo, which imports torch._dynamo on a function's first call
    only to mark it as never compiled, and caches the marked function on it. Nothing is compiled
    in an eager run (the smoke step, CPU training), so the function itself is that cache. A torch
    that wraps these differently is left alone: then the import just happens as before.
    """
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        fn = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if callable(fn) and getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable", fn)


def ortho_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs with native bf16 (compute capability ≥ 8.0), float32 on CPUs and Volta/Turing."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels: GPUs run asynchronously, the CPU needs no wait."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Processor:
    """The run's device and number format, as the training loop uses them."""

    device: torch.device
    autocast: contextlib.AbstractContextManager[object]  # entered around every forward
    embedding_dtype: torch.dtype  # what GPT.init_weights stores the embeddings in
    ortho_dtype: torch.dtype  # MuonAdamW's orthogonalisation
    fp32_state: bool  # MuonAdamW keeps its moments in float32 (low-precision parameters)
    compile: bool  # torch.compile the model and the optimizer's updates
    scaler: torch.amp.GradScaler | None  # fp16 only: loss scaling, so small gradients do not underflow

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()  # type: ignore[no-untyped-call]

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with a GradScaler, on true gradients, and skipped when one is inf/NaN."""
        if self.scaler:
            self.scaler.unscale_(optimizer)  # the optimizer must see true gradients
            self.scaler.step(optimizer)  # skipped when a gradient is inf/NaN; the scale then shrinks
            self.scaler.update()
        else:
            optimizer.step()

    def synchronize(self) -> None:
        synchronize(self.device)


def set_up(platform: Platform) -> Processor:
    """The process set up for training on `platform`; prints the platform line and its warnings."""
    device = torch.device(platform.device)
    print(platform.describe())
    for warning in platform.warnings:
        print(f"warning: {warning}")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the few float32 matmuls left
    if device.type == "cpu":
        keep_freed_memory()
    low_precision = platform.torch_dtype != torch.float32
    autocast: contextlib.AbstractContextManager[object] = (
        torch.autocast(device_type=device.type, dtype=platform.torch_dtype) if low_precision
        else contextlib.nullcontext())
    # Embeddings stored in bf16 where bf16 is the compute dtype; fp16 ones would overflow, and the
    # GradScaler refuses to unscale fp16 gradients, so on fp16 machines they stay float32.
    embedding_dtype = torch.bfloat16 if platform.torch_dtype == torch.bfloat16 else torch.float32
    # torch.compile pays off on CUDA (Triton kernels); on a CPU it only adds minutes of start-up.
    use_compile = platform.compile and device.type == "cuda"
    if not use_compile:
        skip_dynamo_import()
    scaler = torch.amp.GradScaler(device.type) if platform.use_grad_scaler else None
    return Processor(device=device, autocast=autocast, embedding_dtype=embedding_dtype,
                     ortho_dtype=ortho_dtype_for(device), fp32_state=platform.fp32_optimizer_state,
                     compile=use_compile, scaler=scaler)
