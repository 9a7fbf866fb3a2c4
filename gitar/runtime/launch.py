"""Running a train.py under gitar's contract, unmodified: `python -m gitar.runtime.launch train.py [args]`.

The train.py runs as `__main__` (sys.path[0] its directory, sys.argv its path and args), as
`python train.py` would run it: upstream karpathy/autoresearch's module-level script as well
as gitar's own. Around it, what gitar needs from every trainer, so the trainer need not know gitar:

- crash record: any exception is written to $GITAR_CRASH_FILE (gitar/runtime/crash.py) with the
  phase (startup, smoke, train, export) and the optimizer steps taken, exit 1; a GitarError prints
  its one line and exits with its code (2: the agent's input, e.g. model.json).
- export ($GITAR_EXPORT_PATH set): the workspace's `prepare` is imported first and its
  evaluate_bpb replaced, so the trainer's final `evaluate_bpb(model, tokenizer, batch_size)` saves
  the model it is handed as a torch.export program (model(x) -> logits, the eager module in eval
  mode, input [batch_size, MAX_SEQ_LEN] int64) instead of evaluating it (the validation shard is
  hidden in the sandbox) and returns nan, so the trainer prints `val_bpb: nan`; gitar's evaluator
  measures the program. While exporting, every module global of the model's code that exposes
  `flash_attn_func` (upstream's `fa3`) is the pure-PyTorch reference_flash_attn_func below, and
  gitar.runtime.attention's backends (gitar's train.py) all run its sliding_window_attention (a
  train.py with an `sdpa_attention(model)` context of its own runs under that too): the program
  then holds only aten operators, which the evaluator's check_graph accepts and any PyTorch can
  load, and its windowed layers cost what their window holds (blocks of queries, never a dense
  [T, T] mask).
- smoke ($GITAR_SMOKE=1): the run ends with exit 0 after SMOKE_STEPS optimizer steps, printing
  `smoke: ok steps=N ...`. A train.py that handles GITAR_SMOKE itself (gitar's takes one CPU step
  on random tokens and returns) ends before the limit, with its own line.
"""

from __future__ import annotations

import contextlib
import math
import os
import runpy
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from gitar import shared
from gitar.runtime.crash import fail
from gitar.runtime.entry import mark_launched

# Two steps: the first proves forward, backward and the optimizer run; the second that the state the
# first step left (optimizer buffers, updated weights) still runs. More would only spend the
# pre-commit's seconds. gitar's train.py takes its own single smoke step and returns before this.
SMOKE_STEPS = 2


class ModelExportError(RuntimeError):
    """torch.export could not capture the model, so gitar cannot measure it."""


class SmokeDone(BaseException):
    """Raised from the optimizer hook to end a smoke run; a BaseException, so the trainer's own
    `except Exception` cannot swallow it."""


class RunState:
    """Where the run is, for the crash record: the phase and the optimizer steps taken so far."""

    def __init__(self) -> None:
        self.phase = "startup"
        self.step = 0


def reference_flash_attn_func(q: Any, k: Any, v: Any, causal: bool = False,
                              window_size: tuple[int, int] = (-1, -1), softmax_scale: float | None = None,
                              **_ignored: Any) -> Any:
    """FlashAttention 3's flash_attn_func in plain aten operators: q [B, T, H, D], k and v
    [B, T, Hkv, D] -> [B, T, H, D]. Query i sees key j when i - left <= j <= i + right
    (window_size = (left, right), -1 unlimited); causal sets right to 0. Computed block by block
    over the window (gitar/runtime/attention.py), never with a dense [T, T] mask. Unused FA3 options
    (softcap, deterministic, ...) are accepted and ignored: they do not change what a forward computes
    at their defaults."""
    from gitar.runtime.attention import sliding_window_attention

    return sliding_window_attention(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size)


class _ReferenceAttention:
    """An FA3 interface whose flash_attn_func is the reference; anything else is the original's."""

    def __init__(self, original: object) -> None:
        self._original = original
        self.flash_attn_func = reference_flash_attn_func

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _model_globals(model: Any) -> list[dict[str, Any]]:
    """The global namespaces of the code the model's modules run (train.py's, for upstream's)."""
    seen: dict[int, dict[str, Any]] = {}
    for module in model.modules():
        g = getattr(type(module).forward, "__globals__", None)
        if isinstance(g, dict) and not str(g.get("__name__", "")).startswith("torch"):
            seen.setdefault(id(g), g)
    return list(seen.values())


@contextlib.contextmanager
def reference_attention(model: Any) -> Iterator[None]:
    """The model's attention in pure PyTorch for a while (see the module docstring)."""
    namespaces = _model_globals(model)
    swapped: list[tuple[dict[str, Any], str, object]] = []
    with contextlib.ExitStack() as stack:
        for g in namespaces:
            for name, value in list(g.items()):
                if isinstance(value, ModuleType) and value.__name__.startswith("torch"):
                    continue
                if callable(getattr(value, "flash_attn_func", None)) and not isinstance(value, _ReferenceAttention):
                    swapped.append((g, name, value))
                    g[name] = _ReferenceAttention(value)
            own = g.get("sdpa_attention")  # a train.py from before gitar/runtime/attention.py: its own SDPA path
            if callable(own):
                stack.enter_context(own(model))
        # gitar's train.py calls gitar.runtime.attention.attention: its aten path whatever the backend.
        from gitar.runtime.attention import portable_attention

        stack.enter_context(portable_attention())
        try:
            yield
        finally:
            for g, name, value in swapped:
                g[name] = value


def export_model(model: Any, path: Path, batch_size: int, seq_len: int) -> None:
    """Save the model as a torch.export program for gitar's harness evaluation: model(x) -> logits,
    the eager module (not the torch.compile wrapper) in eval mode, x int64 [batch_size, seq_len].
    Called under the trainer's autocast: the graph keeps none, the evaluator applies the format."""
    import torch

    eager = getattr(model, "_orig_mod", model)  # torch.compile keeps the module it wraps here
    eager.eval()
    device = next(eager.parameters()).device
    example = torch.zeros((batch_size, seq_len), dtype=torch.long, device=device)
    try:
        with reference_attention(eager), torch.no_grad():
            program = torch.export.export(eager, (example,))
        torch.export.save(program, path)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelExportError(f"model could not be exported for evaluation: {type(e).__name__}: {first}") from e


def _exporting_evaluate_bpb(prepare: ModuleType, path: Path, state: RunState) -> Callable[..., float]:
    def evaluate_bpb(model: Any, tokenizer: Any, batch_size: int, *args: Any, **kwargs: Any) -> float:
        state.phase = "export"
        export_model(model, path, int(batch_size), int(prepare.MAX_SEQ_LEN))
        print(f"exported the model for gitar's harness evaluation: {path.name}", flush=True)
        return math.nan  # the harness measures the program; train.py prints `val_bpb: nan`

    return evaluate_bpb


def _count_steps(state: RunState, smoke: bool) -> None:
    """A global optimizer hook: every optimizer's step counts, and a smoke run ends at SMOKE_STEPS."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        state.step += 1
        if state.phase == "startup":
            state.phase = "train"
        if smoke and state.step >= SMOKE_STEPS:
            params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
            raise SmokeDone(f"{shared.SMOKE_OK} steps={state.step} params={params / 1e6:.1f}M (stopped by gitar's launcher)")

    register_optimizer_step_post_hook(after_step)


def launch(script: Path, args: Sequence[str]) -> int:
    state = RunState()
    smoke = os.environ.get(shared.SMOKE) == "1"
    if smoke:
        state.phase = "smoke"  # the whole run is the smoke check, whoever takes its step
    export = os.environ.get(shared.EXPORT_PATH)
    sys.argv = [str(script), *args]
    sys.path[0] = str(script.parent)
    mark_launched()  # gitar's train.py leaves its GitarErrors to this function (gitar/runtime/entry.py)
    try:
        _count_steps(state, smoke)
        if export and not smoke:
            import prepare  # the workspace's, from sys.path[0], as train.py's own import finds it

            prepare.evaluate_bpb = _exporting_evaluate_bpb(prepare, Path(export), state)
        runpy.run_path(str(script), run_name="__main__")
    except SmokeDone as done:
        print(f"\n{done}", flush=True)
        return 0
    except SystemExit as e:  # the trainer's own exit(n) keeps its code
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception as e:  # a GitarError too: its one line and its code, no traceback
        code = fail(e, state.phase, state.step)
        if type(e).__name__ == "OutOfMemoryError":
            print("hint: out of GPU memory; lower the device batch size", file=sys.stderr)
        return code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("gitar: error: usage: python -m gitar.runtime.launch TRAIN.py [ARGS...]", file=sys.stderr)
        return 2
    script = Path(argv[0]).absolute()
    if not script.is_file():
        print(f"gitar: error: {argv[0]}: no such file; name the train.py to run", file=sys.stderr)
        return 2
    return launch(script, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
