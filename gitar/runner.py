"""Run one training process under a hard time limit and read what it left behind.

experiment.py calls run_training() with the experiment's command. The trainer runs in
a process group of its own (processes.py), killed on a timeout, when the runner is asked
to stop (stops.py: SIGINT, SIGTERM, SIGHUP), and when the trainer exits but leaves
children behind; each time the runner checks that no member survived.

parse_summary() reads the `---` block the trainer prints at the end (the same block
autoresearch prints); read_progress() reads the last step line for live progress.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gitar.errors import GitarError
from gitar.processes import kill_group, pdeathsig_preexec
from gitar.stops import StopSignals, catch_stop_signals

TAIL_LINES = 30  # lines kept in RunResult.log_tail and in derived crash records
_SUPERVISE_POLL_S = 0.25  # latency of noticing a signal or the deadline while the trainer runs
_SUMMARY_BYTES = 256 * 1024  # the summary block is at the very end; never read a big log whole
_PROGRESS_BYTES = 64 * 1024
_PROGRESS_MAX_BYTES = 4 * 1024 * 1024

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
        log.write(f"[gitar] {line}\n".encode())
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


def run_training(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    crash_path: Path,
    timeout_s: float,
    grace_s: float = 10.0,
    on_start: Callable[[int], None] | None = None,
) -> RunResult:
    """Run the trainer in its own process group with a hard timeout; return what happened.

    stdout and stderr are appended to log_path (between a [gitar] header and footer line).
    Raises GitarError if the log cannot be written or the command cannot be started, and
    RunInterrupted (carrying the aborted result) if the runner receives SIGINT, SIGTERM or
    SIGHUP. In every case no process of the group is left running.
    """
    argv = list(command)
    if not argv:
        raise GitarError("experiment.command is empty; set it in ground.json, e.g. [\"{python}\", \"train.py\"]")
    with _open_log(log_path) as log:
        _write_log(log, log_path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} run {shlex.join(argv)} "
                                  f"in {cwd} (timeout {timeout_s:g} s)")
        start_offset = log.tell()
        try:
            crash_path.parent.mkdir(parents=True, exist_ok=True)
            crash_path.unlink(missing_ok=True)  # a crash file from an earlier run must not be blamed on this one
        except OSError as e:
            raise GitarError(f"cannot prepare the crash file {crash_path}: {e.strerror}") from None
        child_env = {**env, "GITAR_CRASH_FILE": str(crash_path), "PYTHONUNBUFFERED": "1"}

        with catch_stop_signals() as stop:
            started_at, t0 = time.time(), time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pdeathsig_preexec(),
                )
            except OSError as e:
                raise GitarError(f"experiment.command: cannot start {argv[0]!r} in {cwd}: {e.strerror}; "
                                 "fix experiment.command in ground.json") from None
            pgid = proc.pid  # start_new_session: the trainer leads a new session and group
            n_signals = len(stop.stops)

            def hurry() -> bool:
                return len(stop.stops) > n_signals

            try:
                if on_start is not None:
                    on_start(pgid)
                reason = _supervise(proc, t0 + timeout_s, stop)
                n_signals = len(stop.stops)
                # Also after a normal exit: children left behind would keep GPU memory.
                survivors = kill_group(pgid, grace_s=grace_s, reap=proc.poll, hurry=hurry)
            except BaseException:
                kill_group(pgid, grace_s=grace_s, reap=proc.poll, hurry=hurry)
                raise
            returncode = proc.poll()  # None only if the trainer itself survived SIGKILL
            stop.consumed = reason == "aborted"
            ended_at = time.time()

        output = _read_tail(log, start_offset, _SUMMARY_BYTES)
        result = _result(reason, returncode, output, crash_path, log_path, pgid, survivors,
                         started_at, ended_at, timeout_s, stop.stops)
        with suppress(GitarError):
            # The closing line is for people reading the log; a full volume must not cost the
            # result of a run that has already happened.
            _write_log(log, log_path, f"{result.status}, exit {returncode}, {result.wall_s:.1f} s"
                                      + (f", still alive after SIGKILL: {list(survivors)}" if survivors else ""))
    if reason == "aborted":
        raise RunInterrupted(result, stop.stops[0])
    return result


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
    """A JSON object a process left behind (its crash record, its result), or None if absent or damaged."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
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
            signals: list[int]) -> RunResult:
    summary = parse_summary(output)
    lines = output.splitlines()
    val_bpb = summary.get("val_bpb")
    finite = isinstance(val_bpb, float) and math.isfinite(val_bpb)
    status = reason or ("ok" if returncode == 0 and finite else "crash")
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

