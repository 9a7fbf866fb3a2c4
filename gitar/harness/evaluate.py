"""The harness evaluation: val_bpb of an exported model, measured by the pinned prepare.py alone.

gitar runs this in a process of its own once train.py has exited (gitar/integrity.py):

    python -m gitar.harness.evaluate --workspace DIR --program MODEL.pt2 --out RESULT.json [--expect DATA.json]

DIR holds the branch base's prepare.py and ground.json, written from git after training,
never the snapshot train.py ran in (train.py could have rewritten those copies). MODEL.pt2
is the torch.export program train.py saved: a graph of PyTorch operators and its tensors.
Loading it imports nothing from train.py, and this module also refuses pickled Python
objects in the archive and any graph node that is not a PyTorch operator, so the program is
a pure function from tokens to logits. Nothing train.py printed, patched in its own memory
or left in its snapshot takes part in the number.

Before the number, the causality probe: the logits at position t must not change when the
tokens after t change. A model that sees the next token "wins" val_bpb trivially, and an
attention mask bug or a shift in the wrong direction is an easy accident; such a model is
rejected instead of measured.

Exit 0 with RESULT.json written: {"val_bpb": ..., "causality": {...}, ...}, or
{"rejected": "why", ...} for a result that must not count. Any other exit is a failed
evaluation; the failure is written as JSON to $GITAR_CRASH_FILE, as train.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.export.graph_signature import InputKind

from gitar.errors import GitarError
from gitar.integrity import changed_files, hash_evaluation_data

# Relative tolerance of the causality probe, by the compute dtype. An honest model gives the
# same logits bit for bit (rows of one batch do not interact and the kernels are the same);
# the slack only absorbs kernels whose rounding could depend on the other tokens.
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
PROBE_MIN_POSITIONS = 8  # positions checked when the batch has fewer rows than this (more forwards)
PROBE_PROJECTIONS = 8  # logits are compared through random projections: a few floats per position
PROBE_SEED = 1234
CRASH_TRACEBACK_LINES = 20


@dataclass(frozen=True)
class Probe:
    """What the causality probe found: ok, or the first position whose logits saw the future."""

    ok: bool
    positions: int  # how many positions were checked
    max_diff: float  # the largest change seen at or before a checked position (projected logits)
    tolerance: float  # the tolerance of the position that failed, or the largest one used
    position: int | None = None  # the first leaking position


def probe_positions(seq_len: int, n: int) -> list[int]:
    """n positions spread over 0 .. seq_len - 2 (the last position has no future to change)."""
    last = seq_len - 2
    if last < 0:
        return []
    return sorted({round(i * last / max(n - 1, 1)) for i in range(n)})


def causality_probe(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, vocab_size: int, *,
                    rel_tol: float, min_positions: int = PROBE_MIN_POSITIONS, seed: int = PROBE_SEED) -> Probe:
    """Check that the logits at t depend on tokens 0..t only, at positions spread over the row.

    Row b of a perturbed batch keeps x[b, :t+1] and replaces every later token by another
    one; its logits at 0..t must then equal those of x. Each row probes its own position,
    so a batch of B rows checks B positions in one extra forward (the program's input shape
    is fixed). The logits are compared through a few random projections of the vocabulary,
    which keeps memory small: a leak that moves the logits moves their projections.
    """
    batch, seq_len = x.shape
    positions = probe_positions(seq_len, max(min_positions, batch))
    gen = torch.Generator().manual_seed(seed)
    logits = model(x)
    vocab_out = logits.size(-1)
    projection = (torch.randn(vocab_out, PROBE_PROJECTIONS, generator=gen) / math.sqrt(vocab_out)).to(logits.device)
    reference = logits.float() @ projection
    del logits
    worst, tol_max = 0.0, 0.0
    for start in range(0, len(positions), batch):
        chunk = positions[start : start + batch]
        perturbed = x.clone()
        for row, t in enumerate(chunk):
            offsets = torch.randint(1, vocab_size, (seq_len - t - 1,), generator=gen).to(x.device)
            perturbed[row, t + 1 :] = (x[row, t + 1 :] + offsets) % vocab_size
        seen = model(perturbed).float() @ projection
        for row, t in enumerate(chunk):
            ref = reference[row, : t + 1]
            diff = float((seen[row, : t + 1] - ref).abs().max().item())
            tol = rel_tol * max(1.0, float(ref.abs().max().item()))
            if not diff <= tol:  # NaN fails too
                return Probe(False, len(positions), diff, tol, t)
            worst, tol_max = max(worst, diff), max(tol_max, tol)
    return Probe(True, len(positions), worst, tol_max)


# ---------------------------------------------------------------------------
# Loading the exported program without running anyone's Python
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _tensors_only() -> Iterator[None]:
    """While loading: tensors unpickle with weights_only, any other pickled object is refused.

    torch.export.load falls back to full unpickling for objects it cannot load as weights,
    and unpickling can run arbitrary code; a model for evaluation needs none of that.
    """
    real_load = torch.load

    def weights_only(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise GitarError("the exported model holds a pickled Python object; export tensors and operators only")

    patches: list[tuple[Any, str, Any]] = [(torch, "load", weights_only), (pickle, "loads", refuse),
                                           (torch._C, "_pickle_load_obj", refuse)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _is_operator(target: object) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    # operator.getitem and friends (tuple outputs, shape arithmetic): pure builtins
    return callable(target) and getattr(target, "__module__", None) in ("_operator", "math")


def check_operators(program: torch.export.ExportedProgram) -> None:
    """Refuse a graph that calls anything but PyTorch operators (a custom op train.py defined
    is unknown here and arrives as its name; a deserialised torch attribute could be any function)."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_module", "call_method") or (node.op == "call_function"
                                                              and not _is_operator(node.target)):
                raise GitarError(f"the exported model calls {node.target!s:.80}, which is not a PyTorch operator "
                                 "this evaluation can run; use built-in torch operations in the model")


def load_program(path: Path) -> torch.export.ExportedProgram:
    try:
        with _tensors_only():
            program = torch.export.load(path)
    except GitarError:
        raise
    except Exception as e:
        raise GitarError(f"the exported model {path.name} could not be loaded: {type(e).__name__}: {e}") from None
    check_operators(program)
    return program


def input_shape(program: torch.export.ExportedProgram, seq_len: int) -> tuple[int, int]:
    """(batch, seq_len) of the program's one input: int64 tokens [B, MAX_SEQ_LEN]."""
    users = [spec for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    names = {getattr(spec.arg, "name", None) for spec in users}
    metas = [node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder" and node.name in names]
    if len(users) != 1 or len(metas) != 1 or not isinstance(metas[0], torch.Tensor):
        raise GitarError(f"the exported model must take one input, the token ids; it takes {len(users)} "
                         "(export model(x) with x of shape [evaluation.batch_size, MAX_SEQ_LEN])")
    shape, dtype = tuple(metas[0].shape), metas[0].dtype
    if len(shape) != 2 or shape[1] != seq_len or dtype != torch.int64:
        raise GitarError(f"the exported model's input is {dtype} of shape {list(shape)}; it must be int64 token ids "
                         f"of shape [batch, {seq_len}] (MAX_SEQ_LEN)")
    return int(shape[0]), int(shape[1])


class ExportedModel(torch.nn.Module):
    """The loaded program as the model prepare.evaluate_bpb expects: model(x) -> logits."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.program(x)
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise GitarError(f"the exported model returned {type(out).__name__}; it must return the logits tensor")
        return out

    @property
    def device(self) -> torch.device | None:
        tensor = next(iter([*self.parameters(), *self.buffers()]), None)
        return tensor.device if tensor is not None else None


# ---------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------


def import_prepare(workspace: Path) -> ModuleType:
    """The pinned prepare.py as the module `prepare` (nothing else imports it here)."""
    spec = importlib.util.spec_from_file_location("prepare", workspace / "prepare.py")
    if spec is None or spec.loader is None:
        raise GitarError(f"no prepare.py in {workspace}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare"] = module
    spec.loader.exec_module(module)
    return module


def evaluate(workspace: Path, program_path: Path, expect: Mapping[str, str] | None) -> dict[str, Any]:
    t0 = time.time()
    prepare = import_prepare(workspace)
    if expect is not None:
        changed = changed_files(expect, hash_evaluation_data(prepare.GROUND))
        if changed:
            return {"rejected": f"evaluation data changed during the run: {', '.join(changed)} in "
                                f"{prepare.GROUND.cache_dir} (train.py must not write to the data cache)"}
    program = load_program(program_path)
    batch_size, seq_len = input_shape(program, prepare.MAX_SEQ_LEN)
    model = ExportedModel(program)
    device = model.device or torch.device(prepare.PLATFORM.device)
    dtype = prepare.PLATFORM.torch_dtype
    tokenizer = prepare.Tokenizer.from_directory()
    info: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len, "device": str(device),
                            "dtype": str(dtype).removeprefix("torch.")}
    print(f"harness evaluation: exported model [{batch_size}, {seq_len}] on {device}, {info['dtype']}", flush=True)

    def compute() -> contextlib.AbstractContextManager[Any]:
        # The harness decides the number format (the platform's), as train.py's own evaluation does.
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    loader = prepare.make_dataloader(tokenizer, batch_size, seq_len, "val", device=device)
    try:
        x, _, _ = next(loader)
    finally:
        loader.close()
    with compute(), torch.no_grad():
        probe = causality_probe(model, x, tokenizer.get_vocab_size(), rel_tol=PROBE_TOLERANCE.get(dtype, 1e-2))
    info["causality"] = asdict(probe)
    print(f"causality probe: {'ok' if probe.ok else 'FAILED'} ({probe.positions} positions, "
          f"max change {probe.max_diff:.3g}, tolerance {probe.tolerance:.3g})", flush=True)
    if not probe.ok:
        return {"rejected": f"causality probe: logits at position {probe.position} change when later tokens "
                            f"change (the model sees the future; change {probe.max_diff:.3g} > tolerance "
                            f"{probe.tolerance:.3g})", **info}
    with compute(), torch.no_grad():
        val_bpb = prepare.evaluate_bpb(model, tokenizer, batch_size)
    info["seconds"] = round(time.time() - t0, 3)
    return {"val_bpb": val_bpb, **info}


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_crash(exc: BaseException) -> None:
    path = os.environ.get("GITAR_CRASH_FILE")
    if not path:
        return
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    message = exc.message if isinstance(exc, GitarError) else str(exc)
    with contextlib.suppress(OSError):
        _write_json(Path(path), {"type": type(exc).__name__, "message": message[:2000],
                                 "traceback": lines[-CRASH_TRACEBACK_LINES:], "phase": "evaluate"})


def _read_expect(path: Path | None) -> Mapping[str, str] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GitarError(f"--expect {path}: not a data pin ({e})") from None
    return {str(k): str(v) for k, v in data.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gitar's harness evaluation of an exported model")
    parser.add_argument("--workspace", type=Path, required=True, help="holds the pinned prepare.py and ground.json")
    parser.add_argument("--program", type=Path, required=True, help="the torch.export program train.py saved")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    parser.add_argument("--expect", type=Path, help="the data pin: sha256 of each evaluation file")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.workspace.resolve(), args.program, _read_expect(args.expect))
        _write_json(args.out, result)
    except GitarError as e:
        _write_crash(e)
        print(e.message, file=sys.stderr)
        return int(e.code)
    except Exception as e:
        _write_crash(e)
        traceback.print_exc()
        return 1
    print("---")
    if "rejected" in result:
        print(f"rejected: {result['rejected']}")
    else:
        print(f"val_bpb: {result['val_bpb']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
