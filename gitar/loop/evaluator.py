"""The harness evaluation: val_bpb of an exported model, measured by the pinned prepare.py alone.

gitar runs this in a process of its own once train.py has exited (gitar/loop/integrity.py):

    python -m gitar.loop.evaluator --workspace DIR --program MODEL.pt2 --out RESULT.json [--expect DATA.json]

DIR holds the branch base's prepare.py and ground.json, written from git after training,
never the snapshot train.py ran in (train.py could have rewritten those copies). MODEL.pt2
is the torch.export program train.py saved: a graph of PyTorch operators and its tensors.
Loading it imports nothing from train.py, and this module also refuses pickled Python
objects in the archive and any graph node that is not a pure PyTorch operator
(check_program), so the program is a function from tokens to logits and nothing else. Nothing train.py printed, patched in its own memory
or left in its snapshot takes part in the number.

While prepare.evaluate_bpb scores the program, the causality probe checks every batch it
scores: the log-probabilities at position t must not change when the tokens after t change.
A model that sees the next token "wins" val_bpb trivially, and an attention mask bug or a
shift in the wrong direction is an easy accident; such a model is rejected instead of
measured. The program must also be a pure function (no state, no side effects, no
randomness), or it could behave one way when probed and another when scored.

Exit 0 with RESULT.json written: {"val_bpb": ..., "causality": {...}, ...}, or
{"rejected": "why", ...} for a result that must not count. Any other exit is a failed
evaluation; the failure is written as JSON to $GITAR_CRASH_FILE, as train.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import operator
import pickle
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.export.graph_signature import InputKind

from gitar.config.schema import GROUND_FILE, load_ground
from gitar.errors import GitarError
from gitar.files import write_json_atomic
from gitar.loop.eval_data import changed_files, hash_evaluation_data
from gitar.runtime.allocator import keep_freed_memory
from gitar.runtime.crash import fail

# The causality probe compares what val_bpb depends on: log_softmax of the full logits in float32,
# max |difference| over the vocabulary. An honest model gives the same numbers bit for bit at
# positions <= t whatever the tokens after t (rows of a batch do not interact, the shapes and so
# the kernels are the same), so the tolerance need not absorb rounding; it is set so that what
# hides under it is worth less than the noise floor. A change of at most tol nats in
# log p(true token) at every scored position moves val_bpb by at most
# tol / (ln 2 * mean bytes per scored token), and every scored token has at least one byte
# (evaluate_bpb leaves out tokens with none): tol = noise_floor * ln 2 keeps it <= noise_floor
# without reading the data. |change in log p(true token)| <= max over the vocabulary.
MIN_BYTES_PER_TOKEN = 1
PROBE_MISS_PROBABILITY = 1e-6  # the detectable leak fraction is stated at this miss probability
PROBES_PER_BATCH = 1  # probe forwards after each scored forward: each checks one position per row
PROBE_CHUNK_ROWS = 4  # rows turned into float32 log-probabilities at a time (bounds the memory)
DEFAULT_NOISE_FLOOR = 0.001  # a prepare.py without GROUND (upstream's): the shipped ground.json's noise_floor


def probe_tolerance(noise_floor: float) -> float:
    """Nats of log-probability change allowed at a checked position (see MIN_BYTES_PER_TOKEN)."""
    return noise_floor * math.log(2) * MIN_BYTES_PER_TOKEN


def detectable_fraction(positions: int, miss_probability: float = PROBE_MISS_PROBABILITY) -> float:
    """The leak fraction f caught with probability >= 1 - miss_probability by `positions` probe rows.

    A leak of the next token at position s shows only in a probe row whose t is s, and each row
    draws its t uniformly and independently of the model, so a model leaking at a fraction f of
    positions escapes N rows with probability (1 - f)^N (at most that when f varies by row).
    """
    if positions <= 0:
        return 1.0
    return -math.expm1(math.log(miss_probability) / positions)


@dataclass(frozen=True)
class Probe:
    """What the causality probe found over an evaluation: ok, or where a position saw the future."""

    ok: bool
    positions: int  # probe rows: each tested one position t (drawn at random) for a leak of the tokens after it
    batches: int  # scored forwards, each followed by `probes_per_batch` probe forwards
    probes_per_batch: int
    max_diff: float  # the largest |change| of a float32 log-probability at a checked position (nats)
    tolerance: float  # nats
    detects_leak_fraction: float  # a leak at this fraction of positions is caught with p >= 1 - miss_probability
    miss_probability: float
    tolerance_basis: str
    seed: int  # drawn from OS entropy for this evaluation; recorded only to reproduce a rejection
    position: int | None = None  # the first position whose log-probabilities changed
    changed_after: int | None = None  # the probe row's t: the tokens after it were changed


class CausalityLeak(Exception):
    """Raised out of prepare.evaluate_bpb by the probe: the evaluation stops at the first leak."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(f"position {probe.position}")
        self.probe = probe


class ProbedModel(torch.nn.Module):
    """The model prepare.evaluate_bpb scores, with the causality probe after each scored forward.

    prepare.py is the user's and stays as it is: the probe lives in the model it is handed.
    For each batch x it scores, row b of a perturbed copy keeps x[b, :t_b + 1] and gets other
    tokens after t_b (t_b and the tokens drawn at evaluation time from OS entropy, so neither
    train.py nor the program can know them); the log-probabilities of row b at 0..t_b must
    equal those of the scored forward. Both inputs are fresh tensors, so the program never
    sees the loader's storage (where the targets lie next to x).
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int, noise_floor: float,
                 probes_per_batch: int = PROBES_PER_BATCH, seed: int | None = None) -> None:
        super().__init__()
        self.model = model  # a submodule: evaluate_bpb finds the device from its tensors
        self.vocab_size = vocab_size
        self.noise_floor = noise_floor
        self.tolerance = probe_tolerance(noise_floor)
        self.probes_per_batch = probes_per_batch
        self.seed = secrets.randbits(63) if seed is None else seed
        self.generator = torch.Generator().manual_seed(self.seed)
        self.positions = self.batches = 0
        self.max_diff = 0.0

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """model(x) -> logits (gitar's prepare.evaluate_bpb), or model(x, y, reduction='none') -> the
        per-token cross entropy (upstream's), computed here from the program's logits in float32
        with ignore_index -1, as upstream's GPT.forward computes it. Either way the probe runs."""
        logits = self._scored(x)
        if targets is None:
            return logits
        return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                                 ignore_index=-1, reduction=reduction)

    def _scored(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x.clone(memory_format=torch.contiguous_format))
        if logits.dim() != 3 or logits.shape[:2] != x.shape:
            raise GitarError(f"the exported model returned logits of shape {list(logits.shape)}; "
                             f"it must return [batch, seq_len, vocab] = [{x.size(0)}, {x.size(1)}, vocab]")
        self.batches += 1
        for _ in range(self.probes_per_batch if x.size(1) > 1 else 0):
            self._probe(x, logits)
        return logits

    def _probe(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        rows, seq_len = x.shape
        t = torch.randint(0, seq_len - 1, (rows,), generator=self.generator)
        offsets = torch.randint(1, self.vocab_size, (rows, seq_len), generator=self.generator).to(x.device)
        keep = (torch.arange(seq_len)[None, :] <= t[:, None]).to(x.device)
        perturbed = torch.where(keep, x, (x + offsets) % self.vocab_size)  # every later token differs
        change = log_prob_change(logits, self.model(perturbed), keep)
        self.positions += rows
        row_max = change.amax(dim=1).tolist()  # one device sync per probe
        self.max_diff = max(self.max_diff, *row_max)
        for row, diff in enumerate(row_max):
            if not diff <= self.tolerance:
                position = int((change[row] > self.tolerance).nonzero()[0].item())
                raise CausalityLeak(self.result(position, int(t[row].item())))

    def result(self, position: int | None = None, changed_after: int | None = None) -> Probe:
        basis = (f"noise_floor {self.noise_floor:g} bpb x ln 2 x {MIN_BYTES_PER_TOKEN} byte per scored token (the "
                 "fewest): a change below it in every log-probability moves val_bpb by less than the noise floor")
        return Probe(ok=position is None, positions=self.positions, batches=self.batches,
                     probes_per_batch=self.probes_per_batch, max_diff=self.max_diff,
                     tolerance=self.tolerance, detects_leak_fraction=detectable_fraction(self.positions),
                     miss_probability=PROBE_MISS_PROBABILITY, tolerance_basis=basis, seed=self.seed,
                     position=position, changed_after=changed_after)


def log_prob_change(logits: torch.Tensor, probed: torch.Tensor, keep: torch.Tensor,
                    chunk_rows: int = PROBE_CHUNK_ROWS) -> torch.Tensor:
    """float32 [B, T]: max over the vocabulary of |log_softmax(logits) - log_softmax(probed)| where
    keep is set, else 0. Equal values (infinities too) and NaN in both count as no change; NaN
    in one only as an infinite one."""
    out = torch.zeros(keep.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        if bool(((logits[rows] == probed[rows]).all(dim=-1) | ~keep[rows]).all()):
            continue  # the same logits bit for bit (an honest model's): the same log-probabilities, at a fraction of the cost
        a = logits[rows].float().log_softmax(-1)
        b = probed[rows].float().log_softmax(-1)
        same = (a == b) | (a.isnan() & b.isnan())
        diff = torch.where(same, 0.0, (a - b).abs().nan_to_num(nan=math.inf))
        out[rows] = diff.amax(dim=-1)
    return torch.where(keep, out, 0.0)


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


# What a scoring program may call. Allow-lists where they are short: the operator namespace (aten:
# no profiler, collectives, quantized or inductor ops), the higher-order operators (the two that
# export makes of `with torch.autocast` / `torch.no_grad()` inside forward; their subgraphs are
# checked like the graph) and the Python builtins (indexing and scalar arithmetic, not setitem or
# the in-place iadd family). Within aten an allow-list is not practical: 3000+ operators, and a
# model may use any of hundreds of them, so operators are refused by what makes them impure:
# writing to the program's inputs, parameters or buffers (the schema's alias_info.is_write),
# being called only for a side effect (no result: print, asserts, global settings), randomness
# (tag nondeterministic_seeded, unless the op's dropout is off), and memory that is not the
# program's own: uninitialised (empty*, resize*: it can hold the scored forward's freed
# activations during the probe's), a file (from_file), raw offsets into a buffer (nested*).
# ExportedModel also hands every call fresh copies of the parameters and buffers, so a write
# the schema does not declare (aten.batch_norm's running stats) cannot outlive the call either.
_HIGHER_ORDER = ("wrap_with_autocast", "wrap_with_set_grad_enabled")
_BUILTINS = frozenset({operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
                       operator.floordiv, operator.mod, operator.pow, operator.neg, operator.pos, operator.abs,
                       operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
                       operator.or_, operator.xor, operator.not_, operator.invert, operator.truth, operator.index})
_FOREIGN_MEMORY = ("empty", "resize", "from_file", "nested")
_METADATA_ASSERT = "_assert_tensor_metadata"  # export adds it at dtype casts: checks dtype/device, not data
_PURE_INPUTS = frozenset({InputKind.USER_INPUT, InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR})


def _refuse(node: torch.fx.Node, why: str) -> GitarError:
    return GitarError(f"the exported model calls {node.target!s:.80}, {why}; a scored model must be a pure "
                      "function of the tokens: use built-in torch operations, out of place, without randomness")


def _arguments(node: torch.fx.Node, schema: torch._C.FunctionSchema) -> dict[str, object]:
    """The node's value of each schema argument, defaults included."""
    values: dict[str, object] = {}
    for i, arg in enumerate(schema.arguments):
        if not arg.kwarg_only and i < len(node.args):
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        else:
            values[arg.name] = arg.default_value if arg.has_default_value() else None
    return values


def _nodes(value: object) -> list[torch.fx.Node]:
    if isinstance(value, torch.fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes(v)]
    return []


def _dropout_off(values: Mapping[str, object]) -> bool:
    """A seeded operator that draws nothing: dropout with train=False or dropout_p=0 (attention)."""
    for name in ("train", "training"):
        if name in values:
            return values[name] is False
    p = values.get("dropout_p")
    return isinstance(p, (int, float)) and not isinstance(p, bool) and p == 0


def _check_aten(node: torch.fx.Node, op: torch._ops.OpOverload, shared: set[torch.fx.Node]) -> None:
    """Refuse an impure aten call; add the node to `shared` if its result may alias a shared tensor."""
    schema = op._schema
    name = schema.name.split("::")[-1]
    if op.namespace != "aten":
        raise _refuse(node, f"an operator of torch.ops.{op.namespace}, not a built-in aten operator")
    if any(part in name for part in _FOREIGN_MEMORY):
        raise _refuse(node, "which reads memory the program did not compute (uninitialised, a file or raw offsets)")
    if not schema.returns and name != _METADATA_ASSERT:
        raise _refuse(node, "which returns nothing: it is called for a side effect")
    values = _arguments(node, schema)
    if torch.Tag.nondeterministic_seeded in op.tags and not _dropout_off(values):
        raise _refuse(node, "which draws random numbers (dropout and sampling have no place in scoring)")
    aliased = False
    for arg in schema.arguments:
        touched = set(_nodes(values[arg.name])) & shared
        if arg.alias_info is not None and touched:
            if arg.alias_info.is_write:
                raise _refuse(node, f"which writes to {', '.join(sorted(n.name for n in touched))}, an input, "
                                    "parameter or buffer of the program (state that outlives the call)")
            aliased = True
    if aliased and any(ret.alias_info is not None for ret in schema.returns):
        shared.add(node)  # a view of a shared tensor: writing to it writes to that tensor


def check_graph(graph: torch.fx.Graph) -> None:
    """Refuse a graph that calls anything impure or anything but the operators above (a custom
    op train.py defined is unknown here and arrives as its name; a deserialised torch attribute
    could be any function). Placeholders and attributes are shared: a subgraph's placeholders
    are its caller's tensors."""
    higher_order = {getattr(torch.ops.higher_order, name) for name in _HIGHER_ORDER}
    shared: set[torch.fx.Node] = set()
    for node in graph.nodes:
        target = node.target
        if node.op in ("placeholder", "get_attr"):
            shared.add(node)
        elif node.op == "output":
            continue
        elif node.op != "call_function":
            raise _refuse(node, "which is not a PyTorch operator this evaluation can run")
        elif isinstance(target, torch._ops.OpOverload):
            _check_aten(node, target, shared)
        elif isinstance(target, torch._ops.HigherOrderOperator):
            if target not in higher_order:
                raise _refuse(node, "a higher-order operator other than autocast and no_grad regions")
            if set(_nodes([node.args, list(node.kwargs.values())])) & shared:
                shared.add(node)
        elif target in _BUILTINS:
            if target is operator.getitem and set(_nodes(node.args)) & shared:
                shared.add(node)
        elif not (callable(target) and getattr(target, "__module__", None) == "math"):
            raise _refuse(node, "which is not a PyTorch operator this evaluation can run")


def check_program(program: torch.export.ExportedProgram) -> None:
    """Refuse a program that is not a pure function from tokens to logits: state it mutates
    (the signature's mutation outputs), inputs beyond tensors (script objects, effect tokens),
    and graphs check_graph refuses."""
    signature = program.graph_signature
    mutated = {**signature.buffers_to_mutate, **signature.parameters_to_mutate, **signature.user_inputs_to_mutate}
    if mutated:
        raise GitarError(f"the exported model writes to {', '.join(sorted(mutated.values()))} when it runs "
                         "(graph_signature mutations): a scored model must be a pure function without state")
    outputs = {spec.kind.name for spec in signature.output_specs} - {"USER_OUTPUT"}
    inputs = {spec.kind.name for spec in signature.input_specs if spec.kind not in _PURE_INPUTS}
    if outputs or inputs:
        raise GitarError(f"the exported model has {', '.join(sorted(outputs | inputs))} in its signature: "
                         "a scored model takes the tokens and its tensors and returns the logits only")
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            check_graph(module.graph)


def load_program(data: bytes, name: str = "model.pt2") -> torch.export.ExportedProgram:
    """The program from the export's bytes, read once by the caller: what is checked is what runs."""
    try:
        with _tensors_only():
            program = torch.export.load(io.BytesIO(data))
    except GitarError:
        raise
    except Exception as e:
        raise GitarError(f"the exported model {name} could not be loaded: {type(e).__name__}: {e}") from None
    check_program(program)
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
    """The loaded program as the model prepare.evaluate_bpb expects: model(x) -> logits.

    Runs the lifted graph (parameters, buffers and constants are its inputs beside the tokens)
    with a fresh copy of each on every call: a write to them that the checks missed dies with
    the call, so one forward cannot leave anything for the next (a copy costs little next to
    the forward itself).
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.graph = program.graph_module
        self.inputs: list[str | None] = []  # per graph input: the buffer holding it, None for the tokens
        for i, spec in enumerate(program.graph_signature.input_specs):
            if spec.kind == InputKind.USER_INPUT:
                self.inputs.append(None)
                continue
            target = spec.target or ""
            tensor = program.state_dict[target] if target in program.state_dict else program.constants.get(target)
            if not isinstance(tensor, torch.Tensor):
                raise GitarError(f"the exported model lacks the tensor {target} its graph takes")
            self.register_buffer(f"input{i}", tensor.detach())  # evaluate_bpb finds the device from these
            self.inputs.append(f"input{i}")
        if self.inputs.count(None) != 1:
            raise GitarError(f"the exported model must take one input, the token ids; it takes {self.inputs.count(None)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph(*[x if name is None else getattr(self, name).clone() for name in self.inputs])
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise GitarError(f"the exported model returned {type(out).__name__}; it must return the logits tensor")
        return out

    @property
    def device(self) -> torch.device | None:
        tensor = next(self.buffers(), None)
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


def evaluate(workspace: Path, program_path: Path, expect: Mapping[str, str] | None,
             probes_per_batch: int = PROBES_PER_BATCH) -> dict[str, Any]:
    t0 = time.time()
    prepare = import_prepare(workspace)
    # gitar's prepare.py parses the pinned ground.json itself; upstream's has constants instead, and
    # the data it reads is described by the ground.json beside it (gitar init's preset for it).
    ground = getattr(prepare, "GROUND", None)
    if ground is None and (workspace / GROUND_FILE).is_file():
        ground = load_ground(workspace / GROUND_FILE)
    if expect is not None:
        if ground is None:
            raise GitarError(f"{workspace / 'prepare.py'} has no GROUND and there is no {GROUND_FILE} beside it: "
                             "the data pin cannot be checked")
        changed = changed_files(expect, hash_evaluation_data(ground))
        if changed:
            return {"rejected": f"evaluation data changed during the run: {', '.join(changed)} in "
                                f"{ground.cache_dir} (train.py must not write to the data cache)"}
    try:  # read once: what is hashed and checked is what runs, whatever happens to the file meanwhile
        data = program_path.read_bytes()
    except OSError as e:
        raise GitarError(f"the exported model {program_path.name} could not be read: {e}") from None
    program = load_program(data, program_path.name)
    batch_size, seq_len = input_shape(program, prepare.MAX_SEQ_LEN)
    model = ExportedModel(program)
    # An upstream prepare.py has no PLATFORM or GROUND: the program's device, upstream's number
    # format there (bf16 autocast on CUDA, as its train.py evaluates) and the default noise floor.
    platform = getattr(prepare, "PLATFORM", None)
    device = model.device or torch.device(platform.device if platform else "cpu")
    if platform is not None:
        dtype = platform.torch_dtype
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    noise_floor = ground.experiment.noise_floor if ground is not None else DEFAULT_NOISE_FLOOR
    tokenizer = prepare.Tokenizer.from_directory()
    info: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len, "device": str(device),
                            "dtype": str(dtype).removeprefix("torch."),
                            "program_sha256": hashlib.sha256(data).hexdigest(),
                            # A prepare.py from before the rule was configurable counted raw bytes.
                            "bytes_rule": str(getattr(prepare, "TOKEN_BYTES_RULE", "raw"))}
    print(f"harness evaluation: exported model [{batch_size}, {seq_len}] on {device}, {info['dtype']}", flush=True)

    def compute() -> contextlib.AbstractContextManager[Any]:
        # The harness decides the number format (the platform's), as train.py's own evaluation does.
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    probed = ProbedModel(model, tokenizer.get_vocab_size(), noise_floor, probes_per_batch)
    try:
        with compute(), torch.no_grad():
            val_bpb = prepare.evaluate_bpb(probed, tokenizer, batch_size)
    except CausalityLeak as leak:
        probe = leak.probe
    else:
        probe = probed.result()
    info["causality"] = asdict(probe)
    print(f"causality probe: {'ok' if probe.ok else 'FAILED'} ({probe.positions} positions over {probe.batches} "
          f"batches, max change {probe.max_diff:.3g}, tolerance {probe.tolerance:.3g} nats; a leak at "
          f"{probe.detects_leak_fraction:.3g} of positions is caught with probability >= "
          f"{1 - probe.miss_probability:g})", flush=True)
    if not probe.ok:
        return {"rejected": f"causality probe: logits at position {probe.position} change when the tokens after "
                            f"position {probe.changed_after} change (the model sees the future; log-probability "
                            f"change {probe.max_diff:.3g} > tolerance {probe.tolerance:.3g} nats)", **info}
    info["seconds"] = round(time.time() - t0, 3)
    return {"val_bpb": val_bpb, **info}


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
    parser.add_argument("--probes-per-batch", type=int, default=PROBES_PER_BATCH, metavar="N",
                        help=f"causality probe forwards after each scored batch (default {PROBES_PER_BATCH}): "
                             "more positions checked, for a closer look at a suspect record")
    args = parser.parse_args(argv)
    if args.probes_per_batch < 1:
        parser.error("--probes-per-batch must be at least 1")
    keep_freed_memory()  # CPU forwards as fast as train.py's own (gitar/runtime/allocator.py)
    try:
        result = evaluate(args.workspace.resolve(), args.program, _read_expect(args.expect), args.probes_per_batch)
        write_json_atomic(args.out, result)
    except Exception as e:  # a GitarError as its line and code, anything else as its traceback
        return fail(e, "evaluate")
    print("---")
    if "rejected" in result:
        print(f"rejected: {result['rejected']}")
    else:
        print(f"val_bpb: {result['val_bpb']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
