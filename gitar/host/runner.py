"""Run one confined process of the agent's code under a hard time limit and read what it left behind.

run_confined() runs the trainer (experiment.py), the smoke step (preflight.py) and gitar's
evaluator of the export (integrity.py): each is code or output of the agent's. It runs in
a process group of its own (processes.py), killed on a timeout, when the runner is asked
to stop (signals.py: SIGINT, SIGTERM, SIGHUP), and when the process exits but leaves
children behind; each time the runner checks that no member survived.

parse_summary() reads the `---` block the trainer prints at the end (the same block
autoresearch prints); read_progress() reads the last step line for live progress.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from gitar import shared
from gitar.errors import GitarError
from gitar.host import sandbox as sandbox_mod
from gitar.host.limits import Limits, RunGroup, file_size_preexec
from gitar.host.logpump import LOG_PREFIX, LogPump
from gitar.host.processes import kill_group, pdeathsig_preexec, process_stat
from gitar.host.signals import StopSignals, catch_stop_signals

TAIL_LINES = 30  # lines kept in RunResult.log_tail and in derived crash records
_SUPERVISE_POLL_S = 0.25  # latency of noticing a signal or the deadline while the trainer runs
_SUMMARY_BYTES = 256 * 1024  # the summary block is at the very end; never read a big log whole
_PROGRESS_BYTES = 64 * 1024
_PROGRESS_MAX_BYTES = 4 * 1024 * 1024
_INFO_TIMEOUT_S = 30.0  # bwrap reports its namespace once set up; a loaded machine may take seconds
_NAMESPACE_WAIT_S = 5.0  # the kernel empties a namespace whose pid 1 died at once; this is a bound
_PUMP_JOIN_S = 10.0
_JSON_FILE_MAX_BYTES = 1 << 20

_INT_KEYS = frozenset({"num_steps", "depth", "seed"})
# Keys start lower-case (num_params_M is one): an exception line "ValueError: x" is not a key.
_SUMMARY_LINE = re.compile(r"([a-z_][A-Za-z0-9_]*)\s*:\s*(.*)")
_STEP_LINE = re.compile(
    r"step\s+(\d+)\s*\|\s*loss\s+(\S+)\s*\|.*\|\s*train\s+([0-9.]+)\s*/\s*([0-9.]+)s\s*$"
)


@dataclass(frozen=True)
class RunResult:
    """What one training process did.

    status: "ok" (exit 0 and a finite val_bpb), "crash", "timeout" or "aborted".
    crash: None for an ok run; otherwise the JSON object the trainer wrote to its crash
    file, or a record derived from the exit status and the log tail
    ({"type": "ExitCode" | "Signal" | "NoSummary" | "Timeout" | "Aborted", "message", "traceback"}).
    survivors: pids of the group still alive after SIGKILL (normally empty; a process
    stuck in the kernel, e.g. in a GPU driver call, cannot be killed at once).
    """

    status: str
    returncode: int | None
    signal: str | None
    summary: dict[str, float | int | str]
    crash: dict[str, Any] | None
    log_path: Path
    started_at: float
    ended_at: float
    wall_s: float
    log_tail: str
    pgid: int
    survivors: tuple[int, ...] = ()
    sandbox: str | None = None  # "bwrap <version>" or "off"; None: run without gitar's confinement
    limits: dict[str, Any] | None = None  # the limits and what enforced them
    log_incomplete: str | None = None  # why the log lacks part of the output (its volume filled up)


class RunInterrupted(KeyboardInterrupt):
    """The runner was asked to stop (SIGINT/SIGTERM/SIGHUP) and killed the training group.

    A KeyboardInterrupt: a stop request must pass through the `except Exception`
    clauses on its way up, not be mistaken for a failure of gitar, and every command
    already maps KeyboardInterrupt to ExitCode.INTERRUPTED. experiment.py records the
    attempt as aborted on its way up.
    """

    def __init__(self, result: RunResult, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.result = result
        self.signum = signum


@dataclass(frozen=True)
class Progress:
    step: int
    loss: float
    train_s: float  # training seconds so far (the budget counts training only)
    budget_s: float


def expand_command(command: Sequence[str], python: str = sys.executable) -> list[str]:
    """ground.json experiment.command with "{python}" replaced by the interpreter running gitar."""
    return [part.replace("{python}", python) for part in command]


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def _open_log(log_path: Path) -> BinaryIO:
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Readable too: the summary is read back through this descriptor, even if the path goes away.
        return open(log_path, "a+b", buffering=0)
    except OSError as e:
        raise GitarError(f"cannot open the training log {log_path}: {e.strerror}; "
                         "check the permissions and free space of that directory") from None


def _write_log(log: BinaryIO, log_path: Path, line: str) -> None:
    try:
        log.write(f"{LOG_PREFIX}{line}\n".encode())
        os.fsync(log.fileno())
    except OSError as e:
        raise GitarError(f"cannot write the training log {log_path}: {e.strerror}; "
                         "free space on that volume and try again") from None


def _supervise(proc: subprocess.Popen[bytes], deadline: float, stop: StopSignals) -> str | None:
    """Wait for the trainer; return "timeout" or "aborted" if it had to be stopped."""
    while not stop.stops:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        try:
            proc.wait(timeout=min(remaining, _SUPERVISE_POLL_S))
            return None
        except subprocess.TimeoutExpired:
            pass
    return "aborted"


@dataclass(frozen=True)
class Started:
    """The trainer gitar started: what recovery needs to find exactly it, and nothing else, later."""

    pid: int  # the process gitar started (bwrap, or the command itself without a sandbox)
    pgid: int  # its process group (it leads a new session)
    start_time: int | None  # clock ticks after boot (/proc/PID/stat): tells it apart from a reused pid
    pid_namespace: int | None = None  # the sandbox's PID namespace (bwrap --info-fd)
    deadline: float | None = None  # when the runner stops it (epoch seconds): started + its timeout


@dataclass(frozen=True)
class Confined:
    """How a run is confined: the sandbox (None: experiment.sandbox "off") and the limits."""

    sandbox: sandbox_mod.Bwrap | None
    confinement: sandbox_mod.Confinement | None
    protected: tuple[Path, ...]  # paths no bind may expose (the repository, its git dir, the data cache)
    limits: Limits
    run_id: str  # names the run's control group

    @property
    def label(self) -> str:
        return self.sandbox.label if self.sandbox is not None else sandbox_mod.OFF


def run_confined(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    crash_path: Path,
    timeout_s: float,
    grace_s: float = 10.0,
    on_start: Callable[[Started], None] | None = None,
    confined: Confined | None = None,
    needs_val_bpb: bool = True,
) -> RunResult:
    """Run the command (trainer, smoke step or evaluator) in its own process group with a hard timeout; return what happened.

    With `confined`, the command runs inside the sandbox, in a control group with the
    run's limits, and its output reaches log_path through gitar (head and tail kept
    within limits.log_bytes). stdout and stderr are appended to log_path between a
    [gitar] header and footer line. needs_val_bpb: whether a run counts as ok only with
    a finite val_bpb in its summary (the number train.py reports); a run that the harness
    measures needs only exit 0. Raises GitarError if the log cannot be written or the
    command cannot be started, and RunInterrupted (carrying the aborted result) if the
    runner receives SIGINT, SIGTERM or SIGHUP. In every case no process of the run is
    left running: none in its group, its PID namespace or its control group.
    """
    argv = list(command)
    if not argv:
        raise GitarError("experiment.command is empty; set it in ground.json, e.g. [\"{python}\", \"train.py\"]")
    with _open_log(log_path) as log:
        how = f"; sandbox {confined.label}" if confined is not None else ""
        if confined is not None and confined.confinement is not None and confined.confinement.gpu_index is not None:
            how += f", GPU {confined.confinement.gpu_index} only"
        _write_log(log, log_path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} run {shlex.join(argv)} "
                                  f"in {cwd} (timeout {timeout_s:g} s{how})")
        start_offset = log.tell()
        try:
            crash_path.parent.mkdir(parents=True, exist_ok=True)
            crash_path.unlink(missing_ok=True)  # a crash file from an earlier run must not be blamed on this one
        except OSError as e:
            raise GitarError(f"cannot prepare the crash file {crash_path}: {e.strerror}") from None
        child_env = {**env, shared.CRASH_FILE: str(crash_path), "PYTHONUNBUFFERED": "1"}
        group = RunGroup.create(confined.run_id, confined.limits) if confined is not None else None
        try:
            with _Launch(argv, cwd, child_env, log, confined, group) as launch:
                if group is not None:
                    _write_log(log, log_path, f"limits: {group.kind}, {_limit_words(confined)}")
                with catch_stop_signals() as stop:
                    started_at, t0 = time.time(), time.monotonic()
                    proc = launch.start()
                    n_signals = len(stop.stops)

                    def hurry() -> bool:
                        return len(stop.stops) > n_signals

                    try:
                        started = replace(launch.started(), deadline=started_at + timeout_s)
                        if on_start is not None:
                            on_start(started)
                        reason = _supervise(proc, t0 + timeout_s, stop)
                        n_signals = len(stop.stops)
                        # Also after a normal exit: children left behind would keep GPU memory.
                        survivors = launch.stop(grace_s, hurry)
                    except BaseException:
                        launch.stop(grace_s, hurry)
                        raise
                    returncode = launch.returncode()  # None only if the trainer itself survived SIGKILL
                    stop.consumed = reason == "aborted"
                    ended_at = time.time()
                launch.finish_log()
                usage = group.usage() if group is not None else None
        finally:
            if group is not None:
                group.remove()
        pump = launch.pump
        output = pump.end_text() if pump is not None else _read_tail(log, start_offset, _SUMMARY_BYTES)
        result = _result(reason, returncode, output, crash_path, log_path, started.pgid, survivors,
                         started_at, ended_at, timeout_s, stop.stops, needs_val_bpb)
        if pump is not None and pump.error is not None:
            # The run happened; only its log is short. Its result stands, with a word about the log.
            result = replace(result, log_incomplete=f"the log {log_path} is incomplete: {pump.error.strerror}; "
                                                    "free space on that volume")
        if confined is not None:
            result = replace(result, sandbox=confined.label, limits={
                **confined.limits.describe(), "enforced_by": group.kind if group is not None else "rlimit only"})
        cause = usage.cause(confined.limits) if usage is not None and confined is not None else None
        if cause is not None and result.status == "crash":
            # The kernel's verdict beats whatever the trainer managed to write as it died.
            result = replace(result, crash={"type": "LimitExceeded", "message": cause,
                                            "traceback": (result.crash or {}).get("traceback", "")})
        with suppress(GitarError):
            # The closing line is for people reading the log; a full volume must not cost the
            # result of a run that has already happened.
            _write_log(log, log_path, f"{result.status}, exit {returncode}, {result.wall_s:.1f} s"
                                      + (f", still alive after SIGKILL: {list(survivors)}" if survivors else ""))
    if reason == "aborted":
        raise RunInterrupted(result, stop.stops[0])
    return result


def _limit_words(confined: Confined | None) -> str:
    if confined is None:
        return ""
    d = confined.limits.describe()
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)


class _Launch:
    """Starting the trainer (confined or not), and proving afterwards that all of it is gone."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: BinaryIO,
                 confined: Confined | None, group: RunGroup | None) -> None:
        self.argv, self.cwd, self.env, self.log = argv, cwd, env, log
        self.confined, self.group = confined, group
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: LogPump | None = None
        self._fds: list[int] = []
        self._info_r: int | None = None
        self._namespace: int | None = None

    def __enter__(self) -> _Launch:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:
            with suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    def start(self) -> subprocess.Popen[bytes]:
        c = self.confined
        argv, env = self.argv, self.env
        pass_fds: tuple[int, ...] = ()
        if c is not None and c.sandbox is not None and c.confinement is not None:
            self._info_r, info_w = self._pipe()
            argv = sandbox_mod.command(c.sandbox, c.confinement, self.argv, protected=c.protected, info_fd=info_w)
            env = sandbox_mod.environment(self.env, c.confinement)
            pass_fds = (info_w,)
        stdout: int | BinaryIO = self.log
        out_r = out_w = None
        if c is not None:
            out_r, out_w = self._pipe()
            stdout = out_w
        preexec = _preexec([*( [self.group.join_preexec()] if self.group is not None else []),
                            *( [file_size_preexec(c.limits)] if c is not None else [])])
        try:
            self.proc = subprocess.Popen(
                argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds)
        except (OSError, subprocess.SubprocessError) as e:
            what = getattr(e, "strerror", None) or str(e)
            raise GitarError(f"experiment.command: cannot start {self.argv[0]!r} in {self.cwd}: {what}; "
                             "fix experiment.command in ground.json") from None
        for fd in pass_fds:
            self._close(fd)
        if out_r is not None and out_w is not None:
            self._close(out_w)
            self.pump = LogPump(out_r, self.log, c.limits.log_bytes if c is not None else 1 << 62)
            self.pump.start()
        return self.proc

    def started(self) -> Started:
        assert self.proc is not None
        stat = process_stat(self.proc.pid)
        if self._info_r is not None:
            self._namespace = _read_namespace(self._info_r)
            self._close(self._info_r)
        return Started(self.proc.pid, self.proc.pid, stat.start_time if stat else None, self._namespace)

    def returncode(self) -> int | None:
        """The trainer's exit status; a signal that killed it inside the sandbox, negative as for a child.

        bwrap exits with 128 + N when the command died of signal N (it is pid 1's child, not ours).
        """
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None and self._namespace is not None and 128 < code <= 128 + 64:
            return -(code - 128)
        return code

    def stop(self, grace_s: float, hurry: Callable[[], bool]) -> tuple[int, ...]:
        """Everything of the run gone: the process group, the PID namespace, the control group."""
        assert self.proc is not None
        proc = self.proc
        # In a sandbox nothing inside can save anything gitar needs: no grace. bwrap's death takes
        # the namespace with it (--die-with-parent, then the kernel kills what pid 1 leaves).
        grace = 0.0 if self._namespace is not None else grace_s
        survivors = set(kill_group(proc.pid, grace_s=grace, reap=proc.poll, hurry=hurry))
        if self.group is not None:
            survivors.update(self.group.kill())
        if self._namespace is not None:
            survivors.update(_wait_namespace_empty(self._namespace))
        return tuple(sorted(survivors))

    def finish_log(self) -> None:
        if self.pump is not None:
            # Every writer is dead, so the pipe is at its end; the thread only has to drain it.
            self.pump.join(timeout=_PUMP_JOIN_S)


def _preexec(steps: list[Callable[[], None]]) -> Callable[[], None] | None:
    death = pdeathsig_preexec()
    todo = [*steps, *([death] if death is not None else [])]

    def run() -> None:
        for step in todo:
            step()

    return run if todo else None


def _read_namespace(fd: int) -> int | None:
    """The sandbox's PID namespace from bwrap's --info-fd JSON (written once it has set up)."""
    data = b""
    deadline = time.monotonic() + _INFO_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        with suppress(ValueError):
            info = json.loads(data)
            ns = info.get("pid-namespace") if isinstance(info, dict) else None
            return ns if isinstance(ns, int) else None
    return None


def _wait_namespace_empty(namespace: int) -> list[int]:
    deadline = time.monotonic() + _NAMESPACE_WAIT_S
    while True:
        members = sandbox_mod.namespace_members(namespace)
        if not members or time.monotonic() >= deadline:
            return members
        for pid in members:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Reading what the run left
# ---------------------------------------------------------------------------


def _read_tail(f: BinaryIO, start: int, max_bytes: int) -> str:
    """The text of f from `start`, or only its last max_bytes (cut at a line start)."""
    end = f.seek(0, os.SEEK_END)
    begin = max(start, end - max_bytes)
    f.seek(begin)
    data = f.read()
    if begin > start:
        data = data[data.find(b"\n") + 1 :]  # drop the partial first line
    return data.decode("utf-8", errors="replace")


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object a process left behind (its crash record, its result), or None if absent or damaged.

    The trainer writes its crash record: anything bigger than a record is not one, and a
    file of gigabytes must not become gitar's memory.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(_JSON_FILE_MAX_BYTES + 1)
        if len(raw) > _JSON_FILE_MAX_BYTES:
            return None
        obj = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError, MemoryError):  # the process wrote it: anything, nested any depth
        return None
    return obj if isinstance(obj, dict) else None


def _traceback(lines: list[str]) -> str:
    """The last Python traceback in the tail, or simply the last lines."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    return "\n".join(lines[starts[-1] :] if starts else lines[-TAIL_LINES:])


def _derived_crash(status: str, returncode: int | None, summary: dict[str, float | int | str],
                   lines: list[str], timeout_s: float, signals: list[int]) -> dict[str, Any]:
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if status == "timeout":
        kind_name, message = "Timeout", f"still running after the {timeout_s:g} s timeout; process group killed"
    elif status == "aborted":
        kind_name, message = "Aborted", f"gitar received {signal.Signals(signals[0]).name}; process group killed"
    elif returncode is None or returncode < 0:
        name = _signal_name(returncode)
        hint = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        kind_name, message = "Signal", f"killed by {name}{hint}"
    elif returncode > 0:
        kind_name, message = "ExitCode", f"exited with code {returncode}" + (f": {last}" if last else "")
    else:
        value = summary.get("val_bpb")
        found = "no summary block" if not summary else f"val_bpb is {value!r}"
        kind_name, message = "NoSummary", f"exited 0 without a finite val_bpb ({found})"
    return {"type": kind_name, "message": message, "traceback": _traceback(lines)}


def _signal_name(returncode: int | None) -> str | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _result(reason: str | None, returncode: int | None, output: str, crash_path: Path, log_path: Path, pgid: int,
            survivors: tuple[int, ...], started_at: float, ended_at: float, timeout_s: float,
            signals: list[int], needs_val_bpb: bool = True) -> RunResult:
    summary = parse_summary(output)
    lines = output.splitlines()
    val_bpb = summary.get("val_bpb")
    finite = isinstance(val_bpb, float) and math.isfinite(val_bpb)
    status = reason or ("ok" if returncode == 0 and (finite or not needs_val_bpb) else "crash")
    crash = None
    if status != "ok":
        crash = read_json_file(crash_path) or _derived_crash(status, returncode, summary, lines,
                                                               timeout_s, signals)
    return RunResult(
        status=status, returncode=returncode, signal=_signal_name(returncode), summary=summary,
        crash=crash, log_path=log_path, started_at=started_at, ended_at=ended_at,
        wall_s=ended_at - started_at, log_tail="\n".join(lines[-TAIL_LINES:]), pgid=pgid,
        survivors=survivors,
    )


def _summary_value(key: str, raw: str) -> float | int | str:
    try:
        return int(raw) if key in _INT_KEYS else float(raw)
    except ValueError:
        return raw


def parse_summary(text: str) -> dict[str, float | int | str]:
    """The last `---` block of `key: value` lines; {} if there is none.

    A `---` followed by anything else (a traceback, a blank line) is skipped in favour of
    an earlier one. Keys are identifiers starting lower-case, so an exception line
    such as "ValueError: x" never passes for a summary. num_steps, depth and seed are ints,
    other numbers floats, anything else is kept as a string.
    """
    lines = text.splitlines()  # also splits on \r, as progress lines use it
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() != "---":
            continue
        block: dict[str, float | int | str] = {}
        for line in lines[i + 1 :]:
            m = _SUMMARY_LINE.fullmatch(line.strip())
            if m is None:
                break
            block[m.group(1)] = _summary_value(m.group(1), m.group(2))
        if block:
            return block
    return {}


def read_progress(log_path: Path) -> Progress | None:
    """The last complete step line of a (possibly growing, possibly huge) log; None if none yet."""
    try:
        with open(log_path, "rb") as f:
            return _last_step(f)
    except OSError:
        return None


def _last_step(f: BinaryIO) -> Progress | None:
    size = f.seek(0, os.SEEK_END)
    want = _PROGRESS_BYTES
    while True:
        text = _read_tail(f, 0, want)
        # A half-written last line lacks the trailing "<budget>s" and does not match.
        for line in reversed(text.splitlines()):
            m = _STEP_LINE.search(line)
            if m is not None:
                try:
                    return Progress(step=int(m.group(1)), loss=float(m.group(2)),
                                    train_s=float(m.group(3)), budget_s=float(m.group(4)))
                except ValueError:
                    continue
        if want >= size or want >= _PROGRESS_MAX_BYTES:
            return None
        want *= 4

