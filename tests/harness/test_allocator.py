"""gitar/runtime/allocator.py: CPU runs keep freed large blocks, in train.py and in the evaluator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gitar.config.schema import ProcessorConfig
from gitar.loop import evaluator
from gitar.runtime import allocator, devices, smoke
from gitar.runtime.platform import detect_platform, probe_device
from testing.hermetic import REPO_ROOT

# A child frees a 256 MB tensor and says how much of it is still resident: glibc hands a block
# that size back to the OS at once unless told to keep it.
FREED_AND_KEPT = """
import os, sys
import torch
from gitar.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
x = torch.ones(64 * 2**20)  # 256 MB, every page written
del x
print(resident_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", FREED_AND_KEPT, mode], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_large_blocks_stay_in_the_process_only_when_asked() -> None:
    if not allocator.keep_freed_memory():
        pytest.skip("not glibc: nothing to tune")
    assert _kept_mb("default") < 64  # handed back: the next forward faults it in again, page by page
    assert _kept_mb("keep") > 192  # kept: the next forward reuses it


def test_the_evaluator_tunes_the_allocator_before_it_evaluates(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(evaluator, "keep_freed_memory", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(evaluator, "evaluate", lambda *a, **k: calls.append("evaluated") or {"val_bpb": 1.0})
    assert evaluator.main(["--workspace", str(tmp_path), "--program", str(tmp_path / "m.pt2"),
                           "--out", str(tmp_path / "out.json")]) == 0
    assert calls == ["tuned", "evaluated"]


def test_train_py_uses_the_same_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py sets its process up through gitar/runtime: devices.py for training, smoke.py for the
    smoke step; a CPU run of either tunes the allocator."""
    import train

    assert train.devices is devices and train.smoke is smoke
    assert devices.keep_freed_memory is allocator.keep_freed_memory is smoke.keep_freed_memory
    calls: list[str] = []
    monkeypatch.setattr(devices, "keep_freed_memory", lambda: bool(calls.append("training")))
    monkeypatch.setattr(smoke, "keep_freed_memory", lambda: bool(calls.append("smoke")))
    cpu = detect_platform(ProcessorConfig("cpu", "auto", "auto", None, None), probe_device())
    devices.set_up(cpu)
    smoke.cpu_for_smoke(0)
    assert calls == ["training", "smoke"]
