"""The exported program must be a pure function of the tokens: each way to be something else is refused.

A program with state (a buffer it writes, its input mutated) can count its calls and answer
the probe honestly and the scoring forward with a leak; one with side effects can write files
from inside the evaluation; one with randomness or uninitialised memory can tell calls apart
or read what an earlier call left. All tiny modules on the CPU, exported for real.
"""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
from torch import nn

from gitar.errors import GitarError
from gitar.loop import evaluator
from testing.export import SEQ, VOCAB, evaluation, load, tokens

ROWS = 3


class Counting(nn.Module):
    """Honest for the first `honest_calls` forwards (the old probe's), leaking after them."""

    def __init__(self, honest_calls: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, VOCAB)
        self.register_buffer("calls", torch.zeros(()))
        self.honest_calls = honest_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        nxt = torch.nn.functional.one_hot(torch.roll(x, shifts=-1, dims=1), VOCAB).float()
        return self.emb(x) + 5.0 * nxt * (self.calls > self.honest_calls).float()


def save(program: torch.export.ExportedProgram, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    return path


def export(model: nn.Module, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(model.eval(), (tokens(ROWS) if example is None else example,))


def test_a_buffer_written_in_place_is_refused(tmp_path: Path) -> None:
    # The old evaluator measured it: its probe's 4 calls were honest, the scoring forwards leaked.
    path = save(export(Counting()), tmp_path)
    with pytest.raises(GitarError, match=r"aten\.add_\.Tensor, which writes to b_calls, an input, parameter or buffer"):
        load(path)


def test_a_buffer_mutation_in_the_signature_is_refused(tmp_path: Path) -> None:
    functional = export(Counting()).run_decompositions({})  # the write becomes a mutation output
    assert functional.graph_signature.buffers_to_mutate
    with pytest.raises(GitarError, match=r"writes to calls when it runs \(graph_signature mutations\)"):
        load(save(functional, tmp_path))


class MutatedInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.emb(x)
        x[:, 0] = 0  # a write the caller sees (the old probe reused its x for the perturbed copy)
        return out


def test_a_mutated_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GitarError, match=r"which writes to (select|x)"):
        load(save(export(MutatedInput()), tmp_path))
    functional = export(MutatedInput()).run_decompositions({})
    assert functional.graph_signature.user_inputs_to_mutate
    with pytest.raises(GitarError, match=r"graph_signature mutations"):
        load(save(functional, tmp_path))


class Scratch(nn.Module):
    """Copies the tokens into a scratch tensor; made to write a file below."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.zeros(ROWS * SEQ, dtype=torch.int64)
        scratch.copy_(x.reshape(-1))
        return self.emb(x) + scratch.sum() * 0


def test_a_program_that_writes_a_file_is_refused_before_it_runs(tmp_path: Path) -> None:
    program = export(Scratch())
    target = tmp_path / "written-by-the-model"
    # export cannot trace aten.from_file, so a cheat edits the graph: the scratch tensor becomes a
    # shared mapping of a file of its choice, which copy_ then writes.
    [zeros] = [n for n in program.graph.nodes if n.target is torch.ops.aten.zeros.default]
    zeros.target = torch.ops.aten.from_file.default
    zeros.args, zeros.kwargs = (str(target),), {"shared": True, "size": ROWS * SEQ, "dtype": torch.int64}
    program.graph_module.recompile()
    path = save(program, tmp_path)
    with pytest.raises(GitarError, match=r"aten\.from_file\.default, which reads memory the program did not compute"):
        load(path)
    assert not target.exists()


def test_in_place_arithmetic_on_the_programs_own_tensors_is_fine(tmp_path: Path) -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            h.mul_(2)
            h[:, :, 0] = 0.0
            return torch.relu_(h)

    model = evaluator.ExportedModel(load(save(export(InPlace()), tmp_path)))
    assert evaluation(model).ok


@pytest.mark.parametrize("noise", ["rand_like", "dropout", "bernoulli"])
def test_randomness_is_refused(tmp_path: Path, noise: str) -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            if noise == "rand_like":
                return h + torch.rand_like(h)
            if noise == "dropout":
                return torch.nn.functional.dropout(h, 0.1, training=True)
            return h * torch.bernoulli(torch.full_like(h, 0.5))

    with pytest.raises(GitarError, match="which draws random numbers"):
        load(save(export(Noisy()), tmp_path))


def test_dropout_in_eval_mode_and_attention_without_dropout_are_fine(tmp_path: Path) -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.drop(self.emb(x))[:, None]
            return torch.nn.functional.scaled_dot_product_attention(h, h, h, is_causal=True)[:, 0]

    assert evaluation(evaluator.ExportedModel(load(save(export(Attention()), tmp_path)))).ok


def test_uninitialised_memory_is_refused(tmp_path: Path) -> None:
    # During the probe's forward, a fresh allocation can hold the scored forward's freed activations.
    class Leftovers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            return h + torch.empty_like(h) * 0

    with pytest.raises(GitarError, match=r"aten\.empty_like\.default, which reads memory"):
        load(save(export(Leftovers()), tmp_path))


def test_higher_order_operators_beyond_autocast_and_no_grad_are_refused(tmp_path: Path) -> None:
    class Regions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = self.emb(x) * 2
            with torch.no_grad():
                return h.float() + 1

    assert evaluation(evaluator.ExportedModel(load(save(export(Regions()), tmp_path)))).ok

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            return torch.cond(h.sum() > 0, lambda t: t + 1, lambda t: t - 1, (h,))

    with pytest.raises(GitarError, match="a higher-order operator other than autocast and no_grad regions"):
        load(save(export(Branching()), tmp_path))


def test_state_a_check_missed_does_not_outlive_the_call() -> None:
    # Unchecked on purpose (export's program, not load_program's): the runner's own isolation.
    model = evaluator.ExportedModel(export(Counting(honest_calls=1)))
    x = tokens(ROWS)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)  # each call starts from the saved buffer, never from the last call's


def test_the_program_never_sees_the_loaders_storage(tmp_path: Path) -> None:
    # prepare's loader hands out x and the targets y as two halves of one tensor: a program that
    # reads past x's end would read y. Exported with an example that has the same layout.
    class PastTheEnd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            targets = torch.as_strided(x, (2, ROWS, SEQ), (ROWS * SEQ, SEQ, 1))[1]
            return self.emb(x) + 5.0 * torch.nn.functional.one_hot(targets, VOCAB).float()

    pair = torch.stack([tokens(ROWS), tokens(ROWS, seed=1)])
    program = evaluator.ExportedModel(load(save(export(PastTheEnd(), example=pair[0]), tmp_path)))
    probed = evaluator.ProbedModel(program, VOCAB, 1e-3)
    with torch.no_grad(), pytest.raises(RuntimeError, match="out of bounds for storage"):
        probed(pair[0])



@pytest.mark.parametrize(("target", "why"), [
    (operator.iadd, "which is not a PyTorch operator this evaluation can run"),  # in place on a tensor
    (torch.ops.prims.add.default, "an operator of torch.ops.prims, not a built-in aten operator"),
])
def test_only_aten_operators_and_pure_builtins_are_allowed(target: object, why: str) -> None:
    program = export(Scratch())
    [add] = [n for n in program.graph.nodes if n.target is torch.ops.aten.add.Tensor]
    add.target = target  # the graph as a cheat could write it; checked in memory (it need not serialise)
    with pytest.raises(GitarError, match=why):
        evaluator.check_program(program)
