"""Resource limits of one run: memory, processes and file size, enforced by the kernel.

A trainer is hostile code: it may allocate until the machine swaps, fork until the
process table is full, or write a log the size of the disk. bubblewrap limits none of
that, so each run gets a control group of its own (cgroup v2 where its memory and pids
controllers can be delegated to gitar, cgroup v1 otherwise) with memory and process
caps, plus RLIMIT_FSIZE for any one file. RLIMIT_AS is never used: CUDA reserves far
more address space than it touches, and a limit on address space breaks it.

The group is also how gitar proves which processes belong to a run: a process is in
the run's group only if it descends from the trainer gitar started there, and the
group is named after the run id. After a run, `RunGroup.members()` being empty is the
proof that nothing the trainer started still lives.

Where no control group can be made (an unprivileged user without a delegated
subtree), the run proceeds with the file-size limit only and the record says which
limits were enforced: limits are a safety net for the machine, while the number's
honesty rests on the sandbox (gitar/host/sandbox.py).
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "gitar-"  # every run group gitar makes is named gitar-<run id>
_KILL_WAIT_S = 5.0
_POLL_S = 0.02
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one run may use. None: not limited."""

    memory_bytes: int | None
    processes: int | None  # tasks (threads count: a cgroup's pids controller counts them)
    file_bytes: int | None  # the largest file any process of the run may write
    log_bytes: int  # the training log keeps its head and tail within this (gitar writes it)

    def describe(self) -> dict[str, int | None]:
        return {"memory_mb": _mb(self.memory_bytes), "processes": self.processes,
                "file_mb": _mb(self.file_bytes), "log_mb": self.log_bytes // MB}


def _mb(size: int | None) -> int | None:
    return None if size is None else size // MB


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


@dataclass(frozen=True)
class Usage:
    """What the kernel counted against a run's limits."""

    oom_kills: int = 0  # processes the memory limit killed
    pids_refused: int = 0  # forks and thread starts the process limit refused

    def cause(self, limits: Limits) -> str | None:
        """The limit a run ran into, as the cause of its crash record; None if none."""
        if self.oom_kills and limits.memory_bytes is not None:
            return (f"out of memory: the run passed experiment.limits.memory_mb "
                    f"({limits.memory_bytes // MB} MB) and the kernel killed it")
        if self.pids_refused and limits.processes is not None:
            return (f"too many processes: the run passed experiment.limits.processes ({limits.processes}) "
                    "and was refused new processes or threads")
        return None


class RunGroup:
    """A control group holding every process of one run (one directory per controller on cgroup v1)."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory ("unified" on cgroup v2)

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version}"

    @classmethod
    def create(cls, run_id: str, limits: Limits) -> RunGroup | None:
        """A fresh group for the run with the limits set, or None where no group can be made."""
        name = _PREFIX + run_id
        for make in (_make_v2, _make_v1):
            group = make(name, limits)
            if group is not None:
                return group
        return None

    @classmethod
    def find(cls, run_id: str) -> RunGroup | None:
        """The group of a run made earlier (recovery after gitar died), if it still exists."""
        name = _PREFIX + run_id
        v2 = _v2_parent()
        if v2 is not None and (v2 / name).is_dir():
            return cls(2, {"unified": v2 / name})
        dirs = {c: p / name for c, p in _v1_parents().items() if (p / name).is_dir()}
        return cls(1, dirs) if dirs else None

    def join_preexec(self) -> Callable[[], None]:
        """Runs in the child between fork and exec: the child enters the group before it can fork."""
        procs = [str(d / "cgroup.procs") for d in self.dirs.values()]

        def join() -> None:
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # "0" moves the writing process itself
                finally:
                    os.close(fd)

        return join

    def members(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            with suppress(OSError, ValueError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return sorted(pids)

    def kill(self) -> list[int]:
        """SIGKILL every member and wait until the group is empty; returns the pids still there."""
        deadline = time.monotonic() + _KILL_WAIT_S
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
        while True:
            members = self.members()
            if not members or time.monotonic() >= deadline:
                return members
            for pid in members:  # cgroup v1 has no cgroup.kill; new forks are caught on the next pass
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL_S)

    def usage(self) -> Usage:
        if self.version == 2:
            events = _events(self.dirs["unified"] / "memory.events")
            pids = _events(self.dirs["unified"] / "pids.events")
            return Usage(oom_kills=events.get("oom_kill", 0), pids_refused=pids.get("max", 0))
        memory = self.dirs.get("memory")
        pids_dir = self.dirs.get("pids")
        # memory.oom_control counts oom_kill since Linux 4.13.
        oom = _events(memory / "memory.oom_control").get("oom_kill", 0) if memory else 0
        refused = _events(pids_dir / "pids.events").get("max", 0) if pids_dir else 0
        return Usage(oom_kills=oom, pids_refused=refused)

    def remove(self) -> None:
        for d in self.dirs.values():
            with suppress(OSError):
                d.rmdir()


def _events(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with suppress(ValueError):
                out[key] = int(value)
    return out


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per controller ("" for the v2 hierarchy)."""
    out: dict[str, str] = {}
    with suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _v2_mount() -> Path | None:
    for candidate in (_CGROUP_ROOT, _CGROUP_ROOT / "unified"):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def _v2_parent() -> Path | None:
    """A cgroup v2 directory gitar may create run groups in, with memory and pids delegated to it."""
    mount = _v2_mount()
    if mount is None:
        return None
    parent = mount / "gitar"
    try:
        parent.mkdir(exist_ok=True)
        available = (parent / "cgroup.controllers").read_text().split()
        if not {"memory", "pids"} <= set(available):
            # The controllers must be enabled in the parent's parent first (root can).
            (mount / "cgroup.subtree_control").write_text("+memory +pids")
            available = (parent / "cgroup.controllers").read_text().split()
        if not {"memory", "pids"} <= set(available):
            return None
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError:
        return None
    return parent


def _make_v2(name: str, limits: Limits) -> RunGroup | None:
    parent = _v2_parent()
    if parent is None:
        return None
    d = parent / name
    try:
        d.mkdir()
        if limits.memory_bytes is not None:
            (d / "memory.max").write_text(str(limits.memory_bytes))
            with suppress(OSError):  # no swap accounting: nothing to turn off
                (d / "memory.swap.max").write_text("0")
        if limits.processes is not None:
            (d / "pids.max").write_text(str(limits.processes))
    except OSError:
        with suppress(OSError):
            d.rmdir()
        return None
    return RunGroup(2, {"unified": d})


def _v1_parents() -> dict[str, Path]:
    own = _own_cgroups()
    out: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        mount = _CGROUP_ROOT / controller
        if controller in own and (mount / "cgroup.procs").exists():
            out[controller] = mount / own[controller].lstrip("/")
    return out


def _make_v1(name: str, limits: Limits) -> RunGroup | None:
    parents = _v1_parents()
    if set(parents) != {"memory", "pids"}:
        return None
    made: dict[str, Path] = {}
    try:
        for controller, parent in parents.items():
            d = parent / name
            d.mkdir()
            made[controller] = d
        if limits.memory_bytes is not None:
            (made["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            with suppress(OSError):  # swap accounting may be off: then there is no swap to cap
                (made["memory"] / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))
        if limits.processes is not None:
            (made["pids"] / "pids.max").write_text(str(limits.processes))
    except OSError:
        for d in made.values():
            with suppress(OSError):
                d.rmdir()
        return None
    return RunGroup(1, made)


def file_size_preexec(limits: Limits) -> Callable[[], None]:
    """Runs in the child before exec: no file the run writes may pass limits.file_bytes."""
    size = limits.file_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def lower(current: int, size: int) -> int:
        # Never raise a limit the caller set (root could): only ever lower it.
        return size if current == resource.RLIM_INFINITY or size < current else current

    def apply() -> None:
        if size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (lower(soft, size), lower(hard, size)))

    return apply
