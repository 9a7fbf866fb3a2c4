"""A workspace with a measured baseline and a fake trainer that fails on cue.

The trainer behaves like train.py where it matters to gitar: step lines, the summary
block, and train.py's failure contract (run(): a crash record in $GITAR_CRASH_FILE,
the traceback on stderr, exit 1). It also does what a real run does to the process
table: it starts a child in its own process group (a data-loader worker) and writes
both pids to pids.json in the one directory its sandbox may write besides its snapshot
(the run's output directory, where the crash record goes), so a test can check that no
process of the experiment survives; the pids it sees are the sandbox's own, and the test
maps them to the host's through the sandbox's PID namespace. With `wait=True` it stops
after its step lines until the test creates `go` in that directory: the test edits
train.py meanwhile (an edit made during the run) and then lets the fault happen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.hermetic import apply_hermetic
from testing.workspace import Workspace, make_workspace

FAULT_TRAIN = '''\
"""A stand-in trainer for the fault suite: fails on cue the way train.py fails."""
import json, math, os, resource, subprocess, sys, time, traceback
MODE = {mode!r}
VAL_BPB = {val_bpb!r}
WAIT = {wait!r}
if os.environ.get("GITAR_SMOKE") == "1":
    print("smoke: ok loss=9.0 params=0.1M", flush=True)
    sys.exit(0)
STATE = os.path.dirname(os.environ["GITAR_CRASH_FILE"])


class TrainingDiverged(RuntimeError):
    """train.py's fast fail on a NaN/inf loss (check_loss)."""


class OutOfMemoryError(RuntimeError):
    """What torch.OutOfMemoryError looks like to a crash record."""


def write_crash_record(exc):
    # train.py's write_crash_record: type, message, traceback, phase, step; atomic.
    path = os.environ.get("GITAR_CRASH_FILE")
    if not path:
        return
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({{"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": lines[-20:],
                   "phase": "train", "step": 3}}, f)
    os.replace(tmp, path)


def main():
    # A data-loader worker: same process group, not a direct concern of the trainer's exit.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tmp = os.path.join(STATE, "pids.json.tmp")
    with open(tmp, "w") as f:
        json.dump({{"trainer": os.getpid(), "child": child.pid, "pgid": os.getpgrp()}}, f)
    for step in range(3):
        print(f"step {{step:05d}} | loss 3.{{step}}00000 | lrm 1.000 | dt 1ms | tok/s 100 | mfu 0.0% | epoch 1 | train {{step * 0.1:.1f}}/1s", flush=True)
    os.replace(tmp, os.path.join(STATE, "pids.json"))
    deadline = time.time() + 60
    while WAIT and not os.path.exists(os.path.join(STATE, "go")) and time.time() < deadline:
        time.sleep(0.02)
    if MODE == "sleep":
        time.sleep(60)
    elif MODE == "hang":
        time.sleep(600)
    elif MODE == "crash":
        raise RuntimeError("a bug in the new attention code (fake)")
    elif MODE == "nan":
        loss = float("nan")
        if not math.isfinite(loss):  # train.py's check_loss, verbatim message
            raise TrainingDiverged(f"training loss is {{loss}} at step {{3}} (limit {{100.0:g}}): the run diverged; "
                                   "lower the learning rates in model.json or fix the model")
    elif MODE == "nan-summary":
        pass  # exits 0 with val_bpb nan below
    elif MODE == "oom":
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                               "of 79.10 GiB of which 1.19 GiB is free.")
    elif MODE == "oom-rlimit":
        # A real allocation failure: the address space is capped well below what is asked for.
        limit = 512 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hoard = bytearray(2 * limit)
        print(len(hoard))
    elif MODE == "flood":
        # The log outgrows what its volume can take (the test caps file sizes with RLIMIT_FSIZE).
        line = "step 00003 | loss 3.000000 | " + "x" * 200
        for _ in range(100000):
            print(line, flush=True)
    print("---")
    print(f"val_bpb:          {{float('nan') if MODE == 'nan-summary' else VAL_BPB:.6f}}")
    print("training_seconds: 1.0")
    print("total_seconds:    1.5")
    print("peak_vram_mb:     1024.0")
    print("num_steps:        3")
    print("depth:            2")
    print("seed: " + os.environ.get("GITAR_SEED", "42"), flush=True)


def run():
    # train.py's run(): a crash leaves a record and a traceback, and exits 1.
    try:
        main()
    except Exception as e:
        write_crash_record(e)
        traceback.print_exc()
        if isinstance(e, OutOfMemoryError):
            print("hint: out of GPU memory; lower optimization.device_batch_size in model.json", file=sys.stderr)
        return 1
    return 0


sys.exit(run())
'''

def fault_train(mode: str = "ok", val_bpb: float = 1.0, *, wait: bool = False) -> str:
    return FAULT_TRAIN.format(mode=mode, val_bpb=val_bpb, wait=wait)


@dataclass(frozen=True)
class Pids:
    trainer: int
    child: int
    pgid: int


@dataclass
class FaultWorkspace:
    """A Workspace on autoresearch/t1 with its baseline measured, plus the fault suite's helpers."""

    ws: Workspace
    baseline: str
    hooks: bool  # True: a foreign hook is installed, so `gitar try` commits through the hooks
    _running: dict[str, Any] | None = None  # the run wait_running() saw start

    @property
    def root(self) -> Path:
        return self.ws.root

    def state(self, running: dict[str, Any]) -> Path:
        """The running trainer's output directory: where it leaves pids.json and waits for `go`."""
        return self.gitar_dir / "runs" / str(running["run_id"]) / "out"

    @property
    def gitar_dir(self) -> Path:
        return self.root / ".git" / "gitar"

    def write_train(self, mode: str = "ok", val_bpb: float = 1.0, *, wait: bool = False) -> bytes:
        content = fault_train(mode, val_bpb, wait=wait).encode()
        (self.root / "train.py").write_bytes(content)
        return content

    def start_try(self, description: str, *, preexec: Callable[[], None] | None = None) -> subprocess.Popen[str]:
        """`gitar try` in the background, leading its own process group (as a shell job would)."""
        self._running = None
        return subprocess.Popen([sys.executable, "-m", "gitar", "try", description], cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=preexec)

    def wait_running(self, proc: subprocess.Popen[str], timeout_s: float = 30) -> tuple[Pids, dict[str, Any]]:
        """Block until the trainer has printed its steps and gitar's running state names its group."""
        deadline = time.monotonic() + timeout_s
        running_file = self.gitar_dir / "running.json"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"gitar try ended before the run was under way: rc={proc.returncode} "
                                     f"stdout={out!r} stderr={err!r}")
            running = json.loads(running_file.read_text()) if running_file.exists() else {}
            pids_file = self.state(running) / "pids.json" if running.get("pid_namespace") else None
            if pids_file is not None and pids_file.exists():
                inside = json.loads(pids_file.read_text())
                host = host_pids(int(running["pid_namespace"]))
                pids = Pids(trainer=host[inside["trainer"]], child=host[inside["child"]],
                            pgid=_pgrp(host[inside["trainer"]]))
                self._running = running
                return pids, running
            time.sleep(0.02)
        proc.kill()
        raise AssertionError(f"the run did not start within {timeout_s} s: {proc.communicate()!r}")

    def go(self) -> None:
        assert self._running is not None, "go() before wait_running()"
        (self.state(self._running) / "go").write_text("")


def host_pids(pid_namespace: int) -> dict[int, int]:
    """The sandbox's pids (as its processes see them) -> the host's, from /proc/PID/status NSpid."""
    out: dict[int, int] = {}
    target = f"pid:[{pid_namespace}]"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != target:
                continue
            line = next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        levels = line.split()[1:]
        out[int(levels[-1])] = int(levels[0])
    return out


def _pgrp(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rfind(b")") + 2 :].split()[2])


def _add_foreign_hook(root: Path) -> None:
    # Any hook besides gitar's makes `gitar try` commit through git's hooks (the pre-commit
    # framework, then `python -m gitar.loop.hook_entry`): the path a plain `git commit` takes.
    hook = root / ".git" / "hooks" / "commit-msg"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)


def make_fault_workspace(root: Path, *, hooks: bool = False, timeout_s: float = 30) -> FaultWorkspace:
    ws = make_workspace(root, timeout_s=timeout_s)
    (ws.root / "train.py").write_text(fault_train("ok", 1.0))
    ws.git("commit", "-q", "-m", "the fault suite's trainer", "--", "train.py")
    proc = ws.gitar("init", "t1")
    assert proc.returncode == 0, proc.stderr
    if hooks:
        _add_foreign_hook(ws.root)
    proc = ws.gitar("run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return FaultWorkspace(ws, ws.tip(), hooks)


def copy_fault_workspace(template: FaultWorkspace, root: Path, *, hooks: bool = False) -> FaultWorkspace:
    """A copy of a prepared workspace: every case starts from the same measured baseline, fast.

    Nothing in a workspace's .git names its own location (hooks and config name the Python
    interpreter only), so a copy is a workspace of its own.
    """
    shutil.copytree(template.root, root, symlinks=True)
    if hooks:
        _add_foreign_hook(root)
    return FaultWorkspace(Workspace(root), template.baseline, hooks)


@pytest.fixture(scope="session")
def fault_template(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> FaultWorkspace:
    """One workspace with its baseline measured, built once per session in a hermetic environment."""
    root = tmp_path_factory.mktemp("fault-template")
    with pytest.MonkeyPatch.context() as mp:
        apply_hermetic(mp, root / "home", pre_commit_home)
        return make_fault_workspace(root / "ws")
