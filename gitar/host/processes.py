"""The trainer's process group, and whether a process still lives.

The trainer runs in a process group of its own, so that everything it starts
(data-loader workers, compiler subprocesses) is stopped together: a single orphan left
behind would keep GPU memory and poison the next experiment. kill_group() stops a group
and checks that no member survived; process_alive() tells a dead holder of a lock or a
run apart from a live one, across pid reuse.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

_POLL_S = 0.05  # how often a dying group is checked
_KILL_WAIT_S = 5.0  # how long SIGKILL may take to empty a group before giving up on it
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class ProcessStat:
    state: str  # "R", "S", "D", "Z" (zombie), ...
    pgrp: int
    start_time: int  # clock ticks after boot: with the pid, identifies a process across pid reuse


def process_stat(pid: int) -> ProcessStat | None:
    """State, group and start time of a process from /proc (Linux); None if gone or unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcessStat(state=fields[0].decode(), pgrp=int(fields[2]), start_time=int(fields[19]))
    except (IndexError, ValueError):
        return None


def live_members(pgid: int) -> list[int]:
    """Pids of the group's members that are still running (zombies hold no memory: ignored)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # a member we may not signal still exists
    if not Path("/proc/self/stat").exists():
        return [pgid]  # cannot list the members; the group exists
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = process_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):  # the last member may exit between check and signal
        os.killpg(pgid, sig)


def _wait_gone(pgid: int, timeout_s: float, reap: Callable[[], object], hurry: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        reap()  # our own child turns into a zombie until waited for
        if not live_members(pgid):
            return True
        if time.monotonic() >= deadline or hurry():
            return False
        time.sleep(_POLL_S)


def kill_group(
    pgid: int,
    *,
    grace_s: float = 10.0,
    reap: Callable[[], object] = lambda: None,
    hurry: Callable[[], bool] = lambda: False,
) -> tuple[int, ...]:
    """SIGTERM the whole group, give it grace_s to save and exit, then SIGKILL; verify it is gone.

    Returns the pids still alive after SIGKILL (normally none). `hurry` cuts the grace
    short (a second Ctrl-C); `reap` waits for the runner's own child. Recovery may call
    this with a pgid read from the running-state file of a runner that died.
    """
    reap()
    if not live_members(pgid):
        return ()  # nothing to signal, and an empty group's number may be reused later
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, grace_s, reap, hurry):
        return ()
    _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgid, _KILL_WAIT_S, reap, lambda: False)
    return tuple(live_members(pgid))


def pdeathsig_preexec() -> Callable[[], None] | None:
    """Ask Linux to SIGKILL the trainer if the runner dies, even by SIGKILL.

    A second line of defence: the first is kill_group(), and recovery from the pgid the
    caller recorded. The death signal follows the thread that spawned the child, which
    here is the one blocked in run_confined() until the group is gone.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    except (OSError, AttributeError):
        return None
    runner = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != runner:  # the runner died before the request took effect
            os._exit(1)

    return arm


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None without /proc or once it is gone."""
    stat = process_stat(pid)
    return stat.start_time if stat is not None else None


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether a process still runs; with its start time, whether it is still the same process.

    A zombie does not run: in a container nobody may ever reap it.
    """
    stat = process_stat(pid)
    if stat is not None:
        return stat.state not in ("Z", "X") and (start_time is None or stat.start_time == start_time)
    if Path("/proc/self/stat").exists():
        return False  # Linux, and no /proc entry: gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, under another user
    return True
