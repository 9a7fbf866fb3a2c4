"""benchmarks/gpu_check.py runs where CI runs: on a CPU, the parts that need no CUDA, in a tiny configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from testing.hermetic import REPO_ROOT, env_without_gitar


@pytest.mark.slow
def test_the_gpu_check_runs_what_this_machine_offers_and_prints_one_table(hermetic: Path, tmp_path: Path) -> None:
    env = env_without_gitar()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--budget-s", "0.5",
                           "--keep", str(tmp_path / "ws")], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()[2:]}
    assert proc.stdout.startswith("gpu check: ") and set(rows) == {
        "platform", "peak bf16 dense", "export attention", "attention fa3", "attention flex", "attention sdpa",
        "export + harness eval"}
    assert rows["attention sdpa"].split()[2] == "ok"
    evaluated = rows["export + harness eval"]
    assert evaluated.split()[4] == "ok" and "evaluator" in evaluated, evaluated  # the record's timings
    if not gpu_check.probe_device().cuda:
        assert "no CUDA" in rows["platform"]
        assert "needs CUDA" in rows["attention fa3"] and "needs CUDA" in rows["attention flex"]
        assert rows["export attention"].split()[2] == "skipped" and "needs CUDA" in rows["export attention"]
    else:
        assert rows["export attention"].split()[2] == "ok", rows["export attention"]


def test_peak_flops_by_device_name() -> None:
    assert gpu_check.peak_flops_for("NVIDIA H100 80GB HBM3") == 989.5e12
    assert gpu_check.peak_flops_for("NVIDIA H100 PCIe") == 756e12  # the more specific name first
    assert gpu_check.peak_flops_for("NVIDIA H200") == 989.5e12
    assert gpu_check.peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_flops_for("a GPU nobody listed") is None and gpu_check.peak_flops_for(None) is None


def test_tokens_per_second_and_mfu_from_the_step_lines() -> None:
    log = "Estimated FLOPs per token: 3.0e+08\n" + "".join(
        f"step {i:05d} | loss 3.0 | lrm 1.000 | dt {1000 if i <= 10 else 500}ms | tok/s 1 | mfu 0.0% | epoch 1 | "
        "train 0.0/20s\n" for i in range(20)) + "---\nval_bpb: 1.100000\nmfu_percent: 30.00\n"
    got = gpu_check.read_run(log, 524288)
    assert got["tok_s"] == 524288 / 0.5  # the untimed warm-up steps (0..10) left out
    assert got["val_bpb"] == 1.1 and got["mfu_percent"] == 30.0
    assert gpu_check.mfu_percent(got["tok_s"], got["flops_per_token"], 989.5e12) == pytest.approx(
        100 * 1048576 * 3e8 / 989.5e12)
    assert gpu_check.mfu_percent(1.0, 1.0, None) is None
