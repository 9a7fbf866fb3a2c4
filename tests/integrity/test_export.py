"""The export contract and the evaluator's parts, on tiny models on the CPU (no data, seconds).

train.export_for_evaluation must save exactly the model that trained (logits equal), the
evaluator must load it without running Python from the archive, and the causality probe
must pass an honest model and catch the leaks an agent introduces by accident.
"""

from __future__ import annotations

import importlib.util
import itertools
import pickle
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import train
from gitar.config import parse_model
from gitar.errors import GitarError
from gitar.harness import evaluate
from gitar.presets import cpu_model
from tests.conftest import REPO_ROOT
from tests.harness.test_train import tiny_gpt

VOCAB, SEQ = 64, 16
_edits = itertools.count()


def exported(model: nn.Module, tmp_path: Path, batch: int = 3) -> evaluate.ExportedModel:
    path = tmp_path / "model.pt2"
    model.eval()
    train.export_for_evaluation(model, path, batch, SEQ)
    return evaluate.ExportedModel(evaluate.load_program(path))


def tokens(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


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
    config = train.gpt_config(parse_model(cpu_model(), Path("model.json")).architecture, VOCAB, SEQ, "sdpa")
    model = trained_looking(train.build_model(config, torch.device("cuda"), torch.bfloat16)).eval()
    path = tmp_path / "model.pt2"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        train.export_for_evaluation(model, path, 3, SEQ)
    program = evaluate.ExportedModel(evaluate.load_program(path))
    x = tokens().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-2, atol=1e-2)
        assert evaluate.causality_probe(program, x, VOCAB, rel_tol=evaluate.PROBE_TOLERANCE[torch.bfloat16]).ok


def test_export_keeps_the_attention_backend_and_records_the_input_shape(tmp_path: Path) -> None:
    model = tiny_gpt(VOCAB, SEQ)
    path = tmp_path / "model.pt2"
    train.export_for_evaluation(model.eval(), path, 5, SEQ)
    assert all(m.backend == "sdpa" for m in model.modules() if isinstance(m, train.CausalSelfAttention))
    assert evaluate.input_shape(evaluate.load_program(path), SEQ) == (5, SEQ)
    with pytest.raises(GitarError, match=r"must be int64 token ids of shape \[batch, 32\]"):
        evaluate.input_shape(evaluate.load_program(path), 32)


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

    with pytest.raises(train.ModelExportError, match=r"^model could not be exported for evaluation: "):
        train.export_for_evaluation(DataDependent(), tmp_path / "model.pt2", 2, SEQ)
    assert not (tmp_path / "model.pt2").exists()


def test_pickled_python_objects_in_the_archive_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt2"
    train.export_for_evaluation(tiny_gpt(VOCAB, SEQ).eval(), path, 2, SEQ)
    # Whatever path torch takes to unpickle, only weights_only loading is allowed while loading.
    calls: list[object] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    with evaluate._tensors_only():
        torch.load(pickle_file(tmp_path), weights_only=False)
        with pytest.raises(GitarError, match="pickled Python object"):
            pickle.loads(pickle.dumps({"a": 1}))
    assert calls == [True]
    evaluate.load_program(path)  # a real export needs no pickled objects


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
    cfg = parse_model(cpu_model() | {"architecture": arch}, Path("model.json"))
    torch.manual_seed(0)
    model: nn.Module = module.build_model(module.gpt_config(cfg.architecture, VOCAB, SEQ, "sdpa"), torch.device("cpu"))
    return model


def trained_looking(model: nn.Module) -> nn.Module:
    """Weights off their initial values: at init the output projections are zero, so attention
    (and any leak in it) cannot show in the logits yet."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def probe(model: nn.Module, batch: int = 3) -> evaluate.Probe:
    with torch.no_grad():
        return evaluate.causality_probe(model, tokens(batch), VOCAB, rel_tol=1e-4)


def test_an_honest_model_passes_the_probe_with_exact_logits(tmp_path: Path) -> None:
    result = probe(exported(trained_looking(tiny_gpt(VOCAB, SEQ)), tmp_path))
    assert result.ok and result.position is None
    assert result.positions == len(evaluate.probe_positions(SEQ, 8)) == 8
    assert result.max_diff == 0.0


def test_a_train_py_without_the_causal_mask_is_caught(tmp_path: Path) -> None:
    leaky = edited_train(tmp_path, "F.scaled_dot_product_attention(q, k, v, is_causal=True)",
                         "F.scaled_dot_product_attention(q, k, v, is_causal=False)")
    result = probe(exported(trained_looking(gpt_of(leaky)), tmp_path))
    assert not result.ok and result.position == 0  # the first probed position already sees the future
    assert result.max_diff > result.tolerance


def test_a_train_py_with_a_token_shift_the_wrong_way_is_caught(tmp_path: Path) -> None:
    leaky = edited_train(tmp_path, "        x = norm(self.transformer.wte(idx))\n",
                         "        x = norm(self.transformer.wte(idx))\n"
                         "        x = x + torch.roll(x, shifts=-1, dims=1)  # token shift (meant to be +1)\n")
    result = probe(exported(trained_looking(gpt_of(leaky)), tmp_path))
    assert not result.ok and result.position == 0


def test_the_unedited_train_py_passes_the_same_probe(tmp_path: Path) -> None:
    same = edited_train(tmp_path, "is_causal=True", "is_causal=True")
    result = probe(exported(trained_looking(gpt_of(same)), tmp_path))
    assert result.ok and result.max_diff == 0.0


def test_probe_positions_cover_the_row_and_a_batch_of_one_still_checks_several() -> None:
    assert evaluate.probe_positions(16, 4) == [0, 5, 9, 14]
    assert evaluate.probe_positions(2, 8) == [0]
    assert evaluate.probe_positions(1, 8) == []
    calls: list[int] = []
    model = trained_looking(tiny_gpt(VOCAB, SEQ)).eval()

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.size(0))
        return model(x)

    result = probe(counted, batch=1)  # type: ignore[arg-type]
    assert result.ok and result.positions == 8 and calls == [1] * 9  # the reference, then one per position


def test_a_leak_at_one_late_position_only_is_found() -> None:
    class LateLeak(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.nn.functional.one_hot(x, VOCAB).float()
            logits[:, SEQ - 2] += logits[:, SEQ - 1]  # position 14 sees token 15
            return logits

    result = probe(LateLeak())
    assert not result.ok and result.position == SEQ - 2
