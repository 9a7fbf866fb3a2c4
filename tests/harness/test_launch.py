"""gitar's launcher around an unmodified upstream-shaped train.py (testing/fixtures/upstream).

The fixture is karpathy/autoresearch's shape at CPU size: module-level code, a module-global
`fa3` whose flash_attn_func the attention calls, `from prepare import ... evaluate_bpb`, and an
evaluate_bpb calling model(x, y, reduction='none'). Each test runs real processes: the launcher
(`python -m gitar.runtime.launch train.py`) and gitar's harness evaluator on its export.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gitar.host.runner import parse_summary
from gitar.loop import evaluator
from gitar.runtime import launch
from gitar.runtime.attention import block_rows
from testing.export import attention_calls
from testing.hermetic import env_without_gitar

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "testing" / "fixtures" / "upstream"


def write_shards(home: Path) -> None:
    """Two shards where upstream's prepare.py puts them: shard_00000 trains, shard_00001 (the last) validates."""
    data = home / ".cache" / "autoresearch" / "data"
    data.mkdir(parents=True)
    for n in range(2):
        docs = [f"document {n}-{i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(300)]
        pq.write_table(pa.table({"text": docs}), data / f"shard_{n:05d}.parquet", row_group_size=100)


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A copy of the fixture checkout, with HOME pointing at a cache holding its shards."""
    work = tmp_path / "checkout"
    shutil.copytree(FIXTURE, work)
    write_shards(tmp_path / "home")
    return work


def env_for(work: Path, **extra: str) -> dict[str, str]:
    env = env_without_gitar()
    env.update(HOME=str(work.parent / "home"), PYTHONPATH=str(REPO_ROOT), **extra)
    return env


def run(work: Path, *cmd: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The process's output as it wrote it: bytes decoded without newline translation, so \r stays."""
    done = subprocess.run([sys.executable, *cmd], cwd=work, env=env_for(work, **extra), capture_output=True,
                          timeout=300)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_export_scored_by_the_harness_equals_the_in_process_number(upstream: Path, tmp_path: Path) -> None:
    own = run(upstream, "train.py")  # as upstream runs it: evaluate_bpb in-process
    assert own.returncode == 0, own.stderr
    assert "\r" in own.stdout  # its step lines are \r-separated, the summary padded
    reported = parse_summary(own.stdout)
    assert isinstance(reported["val_bpb"], float) and reported["num_steps"] == 12

    program, crash = tmp_path / "model.pt2", tmp_path / "crash.json"
    launched = run(upstream, "-m", "gitar.runtime.launch", "train.py",
                   GITAR_EXPORT_PATH=str(program), GITAR_CRASH_FILE=str(crash))
    assert launched.returncode == 0, launched.stderr
    summary = parse_summary(launched.stdout)
    assert math.isnan(float(summary["val_bpb"])) and summary["num_steps"] == 12
    assert program.is_file() and not crash.exists()
    # Only aten operators: the fixture's fa3 was swapped for gitar's reference while exporting.
    exported = evaluator.load_program(program.read_bytes())
    graph = exported.graph
    assert all(n.op != "call_function" or "aten" in str(n.target) or "getitem" in str(n.target)
               for n in graph.nodes)
    evaluator.check_program(exported)
    # Its short-window layer (window T / 2 = 32 of T = 64) in blocks of queries: no dense [T, T] mask.
    calls = attention_calls(exported)
    assert [mask for _, _, mask, _ in calls].count(None) == 1  # the long layer: is_causal, unmasked
    assert all(mask is None or (mask[0] < 64 and tuple(mask) != (64, 64)) for _, _, mask, _ in calls)
    assert len(calls) == 1 + 64 // block_rows(64)

    out = tmp_path / "result.json"
    scored = run(upstream, "-m", "gitar.loop.evaluator", "--workspace", str(upstream), "--program", str(program),
                 "--out", str(out))
    assert scored.returncode == 0, scored.stderr
    result = json.loads(out.read_text())
    assert result["causality"]["ok"] and result["causality"]["batches"] == 8  # every scored forward probed
    assert result["val_bpb"] == pytest.approx(reported["val_bpb"], abs=2e-6)  # the summary's 6 decimals


def test_smoke_step_limit_ends_the_run_with_exit_0(upstream: Path) -> None:
    smoked = run(upstream, "-m", "gitar.runtime.launch", "train.py", GITAR_SMOKE="1")
    assert smoked.returncode == 0, smoked.stderr
    assert re.search(rf"^smoke: ok steps={launch.SMOKE_STEPS} ", smoked.stdout, re.M), smoked.stdout
    assert "val_bpb" not in smoked.stdout and f"step {launch.SMOKE_STEPS:05d}" not in smoked.stdout


def test_an_import_error_becomes_a_crash_record(upstream: Path, tmp_path: Path) -> None:
    train = upstream / "train.py"
    source = train.read_text()
    stand_in = "fa3 = SimpleNamespace(flash_attn_func=_flash_attn_func)\n"
    assert stand_in in source
    train.write_text(source.replace(stand_in, "from kernels import get_kernel\n"
                                              "fa3 = get_kernel('kernels-community/flash-attn3').flash_attn_interface\n"))
    crash = tmp_path / "crash.json"
    failed = run(upstream, "-m", "gitar.runtime.launch", "train.py", GITAR_CRASH_FILE=str(crash))
    assert failed.returncode == 1
    record = json.loads(crash.read_text())
    assert record["type"] == "ModuleNotFoundError" and record["message"] == "No module named 'kernels'"
    assert record["phase"] == "startup" and record["step"] == 0
    assert any("train.py" in line for line in record["traceback"])


def test_a_crash_in_training_names_the_phase_and_step(upstream: Path, tmp_path: Path) -> None:
    train = upstream / "train.py"
    source = train.read_text()
    anchor = "    step += 1\n"
    train.write_text(source.replace(anchor, anchor + "    if step == 3:\n        raise RuntimeError('boom')\n"))
    crash = tmp_path / "crash.json"
    failed = run(upstream, "-m", "gitar.runtime.launch", "train.py", GITAR_CRASH_FILE=str(crash))
    assert failed.returncode == 1
    record = json.loads(crash.read_text())
    assert (record["type"], record["message"], record["phase"], record["step"]) == ("RuntimeError", "boom", "train", 3)


@pytest.mark.parametrize("window", [(-1, -1), (5, 0), (3, 2), (-1, 0)])
def test_reference_attention_masks_like_fa3(window: tuple[int, int]) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    causal = window[1] == 0
    got = launch.reference_flash_attn_func(q, k, v, causal=causal, window_size=window)
    left, right = window
    scores = torch.einsum("bihd,bjhd->bhij", q, k.repeat_interleave(2, dim=2)) / math.sqrt(8)
    i, j = torch.arange(9)[:, None], torch.arange(9)[None, :]
    allowed = ((j >= i - left) | (left < 0)) & ((j <= i + right) | (right < 0))
    want = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~allowed, -math.inf).softmax(-1),
                        v.repeat_interleave(2, dim=2))
    assert torch.allclose(got, want, atol=1e-5)


def test_probed_model_scores_both_conventions() -> None:
    """model(x) -> logits and model(x, y, reduction='none') -> float32 per-token cross entropy,
    ignore_index -1, each forward probed."""
    torch.manual_seed(0)
    table = torch.randn(11, 11)

    class Bigram(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return table[x]

    probed = evaluator.ProbedModel(Bigram(), 11, 0.001)
    x = torch.randint(0, 11, (3, 6))
    y = torch.randint(0, 11, (3, 6))
    y[0, 0] = -1
    assert torch.equal(probed(x), table[x])
    loss = probed(x, y, reduction="none")
    want = torch.nn.functional.cross_entropy(table[x].view(-1, 11), y.view(-1), ignore_index=-1, reduction="none")
    assert loss.dtype == torch.float32 and torch.allclose(loss, want) and loss[0] == 0
    assert probed.batches == 2 and probed.positions == 6


def test_val_bpb_nan_from_the_launchers_export_is_no_mismatch() -> None:
    from gitar.loop.integrity import HARNESS, Measurement
    assert Measurement("ok", 1.0, HARNESS, math.nan).mismatch is None  # train.py measured nothing
    assert Measurement("ok", 1.0, HARNESS, math.inf).mismatch is not None  # a number it did print still counts
    assert Measurement("ok", 1.0, HARNESS, 1.5).mismatch is not None
    assert parse_summary("step 00001 | x\rstep 00002 | y\n---\nval_bpb:          nan\nnum_steps:        2\n") == {
        "val_bpb": pytest.approx(math.nan, nan_ok=True), "num_steps": 2}
