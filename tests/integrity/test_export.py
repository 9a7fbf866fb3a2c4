"""The export contract and the evaluator's parts, on tiny models on the CPU (no data, seconds).

gitar.runtime.launch.export_model must save exactly the model that trained (logits equal), the
evaluator must load it without running Python from the archive, and the causality probe
must pass an honest model with no change at all and catch the leaks an agent introduces, by
accident or to win (tests/integrity/test_purity.py: programs that are not pure functions).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import train
from gitar.demo.presets import cpu_model
from gitar.errors import GitarError
from gitar.loop import evaluator
from gitar.runtime import launch
from testing.export import NOISE_FLOOR, SEQ, VOCAB, evaluation, exported, load, tokens, trained_looking
from testing.hermetic import REPO_ROOT
from testing.model import tiny_gpt

_edits = itertools.count()








@pytest.mark.parametrize("pattern", ["SL", "L"], ids=["sliding-window-mask", "causal-kernel"])
def test_exported_program_gives_the_eager_models_logits(tmp_path: Path, pattern: str) -> None:
    model = trained_looking(tiny_gpt(VOCAB, SEQ, window_pattern=pattern))
    program = exported(model, tmp_path)
    x = tokens()
    with torch.no_grad():
        eager, loaded = model(x), program(x)
    assert loaded.shape == (3, SEQ, VOCAB)
    torch.testing.assert_close(loaded, eager, rtol=0, atol=1e-6)
    assert loaded.abs().max() > 0.1  # the comparison is of real numbers, not of zeros


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_export_under_bf16_autocast_on_cuda_matches_the_eager_model(tmp_path: Path) -> None:
    # As train.py runs on a GPU: bf16 embeddings, float32 matrices, autocast while exporting;
    # the evaluator applies the same autocast to the loaded program.
    torch.manual_seed(0)
    config = train.gpt_config(train.parse_model(cpu_model(), Path("model.json")).architecture, VOCAB, SEQ, "sdpa")
    model = trained_looking(train.build_model(config, torch.device("cuda"), torch.bfloat16)).eval()
    path = tmp_path / "model.pt2"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        launch.export_model(model, path, 3, SEQ)
    program = evaluator.ExportedModel(load(path))
    x = tokens().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-2, atol=1e-2)
    # The probe's tolerance assumes the GPU kernels too give a row the same numbers whatever the others hold.
    result = evaluation(program, batches=8, autocast="cuda")
    assert result.ok and result.max_diff == 0.0, result


def test_export_keeps_the_attention_backend_and_records_the_input_shape(tmp_path: Path) -> None:
    model = tiny_gpt(VOCAB, SEQ)
    path = tmp_path / "model.pt2"
    launch.export_model(model.eval(), path, 5, SEQ)
    assert all(m.backend == "sdpa" for m in model.modules() if isinstance(m, train.CausalSelfAttention))
    assert evaluator.input_shape(load(path), SEQ) == (5, SEQ)
    with pytest.raises(GitarError, match=r"must be int64 token ids of shape \[batch, 32\]"):
        evaluator.input_shape(load(path), 32)


def test_a_model_that_cannot_be_exported_is_a_clear_error(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            if h.sum() > 0:  # Python control flow on a tensor's value: export cannot trace it
                return h
            return -h

    with pytest.raises(launch.ModelExportError, match=r"^model could not be exported for evaluation: "):
        launch.export_model(DataDependent(), tmp_path / "model.pt2", 2, SEQ)
    assert not (tmp_path / "model.pt2").exists()


def test_pickled_python_objects_in_the_archive_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt2"
    launch.export_model(tiny_gpt(VOCAB, SEQ).eval(), path, 2, SEQ)
    # Whatever path torch takes to unpickle, only weights_only loading is allowed while loading.
    calls: list[object] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    with evaluator._tensors_only():
        torch.load(pickle_file(tmp_path), weights_only=False)
        with pytest.raises(GitarError, match="pickled Python object"):
            pickle.loads(pickle.dumps({"a": 1}))
    assert calls == [True]
    load(path)  # a real export needs no pickled objects


def pickle_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.pt"
    torch.save(torch.arange(3), path)
    return path


# ---------------------------------------------------------------------------
# The causality probe
# ---------------------------------------------------------------------------


def edited_train(tmp_path: Path, old: str, new: str) -> ModuleType:
    """A copy of the repository's train.py with one edit, imported as a module of its own."""
    source = (REPO_ROOT / "train.py").read_text()
    assert source.count(old) == 1, f"train.py no longer contains {old!r}"
    name = f"train_edited_{next(_edits)}"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(old, new))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def gpt_of(module: ModuleType, window_pattern: str = "SL") -> nn.Module:
    arch = cpu_model()["architecture"] | {"depth": 3, "aspect_ratio": 16, "head_dim": 16,
                                          "window_pattern": window_pattern}
    cfg = train.parse_model(cpu_model() | {"architecture": arch}, Path("model.json"))
    torch.manual_seed(0)
    model: nn.Module = module.build_model(module.gpt_config(cfg.architecture, VOCAB, SEQ, "sdpa"), torch.device("cpu"))
    return model






@pytest.mark.parametrize("pattern", ["SL", "L"], ids=["sliding-window-mask", "causal-kernel"])
def test_an_honest_model_passes_the_probe_with_exact_log_probabilities(tmp_path: Path, pattern: str) -> None:
    result = evaluation(exported(trained_looking(tiny_gpt(VOCAB, SEQ, window_pattern=pattern)), tmp_path), batches=5)
    assert result.ok and result.position is None
    assert (result.positions, result.batches) == (15, 5)  # one position per row of every scored batch
    assert result.max_diff == 0.0
    assert result.tolerance == NOISE_FLOOR * math.log(2)
    assert result.detects_leak_fraction == pytest.approx(1 - 1e-6 ** (1 / 15))


@pytest.mark.parametrize("pattern", ["SL", "L"], ids=["sliding-window-mask", "causal-kernel"])
def test_an_honest_model_exported_under_bf16_autocast_passes_with_no_change(tmp_path: Path, pattern: str) -> None:
    model = trained_looking(tiny_gpt(VOCAB, SEQ, window_pattern=pattern)).eval()
    path = tmp_path / "model.pt2"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        launch.export_model(model, path, 3, SEQ)
    result = evaluation(evaluator.ExportedModel(load(path)), batches=4, probes_per_batch=2, autocast="cpu")
    assert result.ok and result.max_diff == 0.0 and result.positions == 4 * 3 * 2


def test_a_train_py_without_the_causal_mask_is_caught(tmp_path: Path) -> None:
    # Every layer's window opened to the right (FA3's -1: unlimited): each query sees the future.
    leaky = edited_train(tmp_path, "window_size=(window, 0)", "window_size=(window, -1)")
    result = evaluation(exported(trained_looking(gpt_of(leaky)), tmp_path))
    assert not result.ok and result.position == 0  # position 0 already sees the changed tokens
    assert result.max_diff > result.tolerance and result.batches == 1


def test_a_train_py_with_a_token_shift_the_wrong_way_is_caught(tmp_path: Path) -> None:
    leaky = edited_train(tmp_path, "        x = norm(self.transformer.wte(idx))\n",
                         "        x = norm(self.transformer.wte(idx))\n"
                         "        x = x + torch.roll(x, shifts=-1, dims=1)  # token shift (meant to be +1)\n")
    result = evaluation(exported(trained_looking(gpt_of(leaky)), tmp_path))
    assert not result.ok and result.position == result.changed_after  # it sees one token ahead


def test_the_unedited_train_py_passes_the_same_probe(tmp_path: Path) -> None:
    same = edited_train(tmp_path, "window_size=(window, 0)", "window_size=(window, 0)")
    result = evaluation(exported(trained_looking(gpt_of(same)), tmp_path))
    assert result.ok and result.max_diff == 0.0


class NextTokenLeak(nn.Module):
    """Logits from an embedding and a head (bf16 under autocast), plus `eps` on the next token's
    logit where `leaks` says so: the positions a cheat picked."""

    def __init__(self, eps: float, leaks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 32)
        self.head = nn.Linear(32, VOCAB)
        self.eps = eps
        self.leaks = leaks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nxt = torch.nn.functional.one_hot(torch.roll(x, shifts=-1, dims=1), VOCAB).float()
        where = self.leaks(x) if self.leaks is not None else torch.ones_like(x, dtype=torch.bool)
        return self.head(self.emb(x)) + self.eps * nxt * where[..., None]


def program_of(model: nn.Module, tmp_path: Path, autocast: str | None = None) -> evaluator.ExportedModel:
    path = tmp_path / "model.pt2"
    compute = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with compute, torch.no_grad():
        torch.export.save(torch.export.export(model.eval(), (tokens(),)), path)
    return evaluator.ExportedModel(load(path))


@pytest.mark.parametrize("autocast", [None, "cpu"], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("eps", [1.0, 1e-2, 2e-3])
def test_a_small_nudge_towards_the_next_token_at_every_position_is_caught(tmp_path: Path, eps: float,
                                                                         autocast: str | None) -> None:
    # eps = 1 passed the old probe (relative tolerance 1e-2 under bf16) and gained 0.44 bpb.
    result = evaluation(program_of(NextTokenLeak(eps), tmp_path, autocast), autocast=autocast)
    assert not result.ok and result.batches == 1
    assert result.position == result.changed_after
    assert result.max_diff > result.tolerance


def test_what_hides_under_the_tolerance_is_worth_less_than_the_noise_floor(tmp_path: Path) -> None:
    eps = 1e-4  # below the tolerance: passes, and moves no log-probability by more than eps
    result = evaluation(program_of(NextTokenLeak(eps), tmp_path), batches=8)
    assert result.ok and 0 < result.max_diff <= eps + 1e-5 < result.tolerance  # eps, and float32 rounding
    assert result.tolerance / math.log(2) <= NOISE_FLOOR  # at >= 1 byte per scored token


def probe_positions(seq_len: int, n: int) -> list[int]:
    """Where the old probe looked: n positions spread over the row, the same every time."""
    return sorted({round(i * (seq_len - 2) / max(n - 1, 1)) for i in range(n)})


def test_a_leak_everywhere_but_at_predictable_positions_is_caught(tmp_path: Path) -> None:
    honest_at = torch.zeros(SEQ, dtype=torch.bool)
    honest_at[probe_positions(SEQ, 8)] = True
    model = NextTokenLeak(5.0, lambda x: ~honest_at.expand(x.shape))
    result = evaluation(program_of(model, tmp_path), batches=20)
    assert not result.ok and result.position not in probe_positions(SEQ, 8)


def test_a_leak_at_a_few_positions_picked_by_content_is_caught_over_many_batches(tmp_path: Path) -> None:
    def picked(x: torch.Tensor) -> torch.Tensor:  # ~1/32 of positions, by a hash of the token and the one before
        return (x * 7 + torch.roll(x, shifts=1, dims=1) * 3) % 32 == 0

    # The old probe checked 24 positions of the first batch and missed this one; the new one checks
    # one random position per row of every batch: P(miss) = (31/32)^512 < 1e-7 over 128 batches of 4.
    result = evaluation(program_of(NextTokenLeak(5.0, picked), tmp_path), batches=128, rows=4)
    assert not result.ok and result.position is not None and result.changed_after is not None
    assert result.position <= result.changed_after and result.max_diff > 1.0


def test_the_probe_draws_fresh_positions_from_os_entropy_each_evaluation() -> None:
    model = NextTokenLeak(0.0)
    seeds = {evaluator.ProbedModel(model, VOCAB, NOISE_FLOOR).seed for _ in range(4)}
    assert len(seeds) == 4


def test_the_detectable_leak_fraction_and_the_tolerance() -> None:
    # The README's figures: the CPU preset scores 16 batches of 16 rows, the H100 default 10240 rows.
    assert evaluator.detectable_fraction(65536 // 256) == pytest.approx(0.0526, abs=1e-4)
    assert evaluator.detectable_fraction(20971520 // 2048) == pytest.approx(0.001348, abs=1e-6)
    assert evaluator.detectable_fraction(0) == 1.0
    assert evaluator.probe_tolerance(1e-3) == pytest.approx(6.931e-4, abs=1e-7)


def test_the_probe_count_per_batch_is_at_least_one() -> None:
    with pytest.raises(SystemExit):
        evaluator.main(["--workspace", ".", "--program", "m.pt2", "--out", "r.json", "--probes-per-batch", "0"])
