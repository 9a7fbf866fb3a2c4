"""The fault suite's workspace (tests/faults): a measured baseline and a fake trainer that fails on cue.

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

from testing.trainers import fault_train
from testing.workspace import Workspace, make_workspace


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
