"""Stop requests: SIGINT, SIGTERM and SIGHUP, and when gitar acts on them.

A stop must never cost a record. While a trainer runs, a stop kills its process group
and the attempt is recorded as aborted (the runner catches the signals). Between a
commit and its run, and between a run and its record, a stop waits: it is held
(stop_signals_held) and delivered once it can no longer cut the bookkeeping in half.
A process that only waits for others (`gitar try` waiting for its hooks) turns SIGTERM
and SIGHUP into interrupts it can pass on; a hook whose `gitar try` died stops its own
run (stop_if_gone); a stop that reached only `gitar try` is passed on to the run its
hooks started (stop_hook_run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from gitar.host import state
from gitar.host.processes import process_alive
from gitar.paths import Paths

_GROUP_SIGNAL_S = 0.3  # git exits this fast when a terminal's Ctrl-C reached it too
_RECORD_WAIT_S = 30.0  # the runner's grace for the trainer (10 s) and SIGKILL (5 s), with room

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# Stops asked for by this process itself (stop_if_gone), as the signal they stand for. Sticky:
# a run that starts after the request is stopped at once.
_requested: list[int] = []


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP recorded instead of acted on, so the runner can kill the group first."""

    def __init__(self) -> None:
        self.received: list[int] = []  # real signals, passed on at the end unless they aborted the run
        self.consumed = False  # the run was aborted for them; else they are passed on at the end

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    @property
    def stops(self) -> list[int]:
        """Every reason to stop so far: the signals received, then the requests (never re-raised)."""
        return self.received + _requested


@contextmanager
def stop_if_gone(pid: int | None, start_time: int | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Stop the training runs of this block, as a SIGHUP would, once process `pid` has died.

    The post-commit hook runs the experiment of the `gitar try` that made the commit. When
    that process dies (SIGKILL, SIGTERM, a closed terminal), nobody waits for the run any
    more: it is aborted and recorded as such at once, as `gitar try` running the experiment
    itself would have been, instead of going on unseen. A request, not a real signal: outside
    a run it only keeps later runs from starting, so the record being written is never cut off.
    """
    if pid is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        # Stop signals are the main thread's business: delivered here, they would slip past its mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while not done.wait(poll_s):
            if not process_alive(pid, start_time):
                _requested.append(signal.SIGHUP)
                return

    watcher = threading.Thread(target=watch, name="gitar-stop-if-gone", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        _requested.clear()


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP turned into an interrupt (stop_signals_interrupt); exits like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGINT unless it says otherwise."""
    signum = getattr(interrupt, "signum", None)
    return signum if isinstance(signum, int) else signal.SIGINT


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While the body runs, SIGTERM and SIGHUP interrupt it as Ctrl-C does (StopRequested).

    For a process that waits on others doing the work (`gitar try` waiting for `git commit`
    and its hooks): stopped by any of the three, it can pass the stop on and wait for the
    record, instead of dying at once and leaving the run to go on unseen.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP pending from a commit until its run is under way.

    Between `git commit` and the running-state file nothing records the attempt, so a
    stop request there would leave a commit nobody measured. Held, it is delivered when
    the runner installs its handlers (and then recorded as aborted) or when this ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def catch_stop_signals() -> Iterator[StopSignals]:
    catcher = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield catcher  # Python only delivers signals to the main thread
        return
    previous = {sig: signal.signal(sig, catcher._handle) for sig in STOP_SIGNALS}
    # A caller that held the stop signals back (stop_signals_held) gets them delivered here.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield catcher
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        # Held again after the run: the record of a run must not be cut off half way by a stop
        # that came too late to abort it; the holder gets it once the record is written.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if catcher.received and not catcher.consumed:
            # Arrived after the trainer had finished: the caller's handler still gets it.
            signal.raise_signal(catcher.received[0])


def stop_hook_run(paths: Paths, run_id: str, commit: subprocess.Popen[bytes], signum: int) -> None:
    """`gitar try` was stopped while `git commit` runs its hooks: see the run stop and be recorded.

    Ctrl-C at a terminal reaches the whole foreground process group, hooks included, and
    git exits at once. A signal sent to gitar alone (kill, an agent's harness) reaches
    nobody else: it is passed on to the runner named in the running state, once its run is
    under way (before that the commit is still being checked, and stopping git there could
    leave a commit that no hook records). Returns when git has exited and the run is
    recorded, or its runner is gone and the next gitar command records it.
    """
    try:
        commit.wait(timeout=_GROUP_SIGNAL_S)
    except subprocess.TimeoutExpired:
        while commit.poll() is None:
            running = state.load(paths)
            if running is not None and running.run_id == run_id and running.alive():
                with suppress(ProcessLookupError):
                    os.kill(running.pid, signum)
                break
            time.sleep(0.05)
        commit.wait()
    deadline = time.monotonic() + _RECORD_WAIT_S
    while time.monotonic() < deadline:
        running = state.load(paths)
        if running is None or running.run_id != run_id or not running.alive():
            return
        time.sleep(0.05)
