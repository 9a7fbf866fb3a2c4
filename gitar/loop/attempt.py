"""One attempt through the loop, in one order: the stages `gitar try` and the git hooks both run.

- guard: the pre-commit stage, the preflight on what is staged (preflight.py).
- after_commit: the post-commit stage. The lock handoff of a lock this process holds, the
  queue for a remote's runner, the plan (judged against the best it builds on), a message
  that breaks the text rules recorded rejected, then the run: detached, or here under the
  lock (taken, or joined from the `gitar try` that made the commit).
- run_detached: the detached process's part of `gitar try --detach`.

`gitar try` calls them in its own process when only gitar's hooks would run (commands/try_.py);
otherwise git's hooks do (hook_entry.py). Each caller only reads its input and says the outcome,
so the order lives here alone.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gitar.config.schema import Ground
from gitar.errors import GitarError
from gitar.host import lock, signals, state
from gitar.loop import experiment, preflight
from gitar.loop.experiment import Plan
from gitar.loop.opened import Opened
from gitar.store.git import Git
from gitar.store.records import Record
from gitar.text import DESCRIPTION_CHARS, HYPOTHESIS, NOTE_CHARS, check_message, check_text, safe, subject

DETACH_START_TIMEOUT_S = 30.0

# How the committed attempt runs.
RUN = "run"  # here, now, under the lock
DETACH = "detach"  # in a background process (`gitar try --detach`); `gitar wait` picks it up
QUEUE = "queue"  # on a remote's runner (`gitar try --remote`)

Q = TypeVar("Q")


@dataclass(frozen=True)
class Committed:
    """An attempt's commit on its branch, and what came with it."""

    sha: str
    branch: str
    run_id: str
    hypothesis: str | None
    token: str | None  # the lock token of the `gitar try` that made it; None for a plain `git commit`
    smoke_s: float | None = None  # the preflight's smoke step, when this process ran it


@dataclass(frozen=True)
class Detached:
    """A run handed to a background process, which has taken the lock over (or already finished)."""

    plan: Plan


def guard(ws: Opened, ground: Ground, *, staged: Git | None = None, echo: bool = True, token: str | None = None,
          description: str | None = None, hypothesis: str | None = None) -> float | None:
    """The pre-commit stage on the index being committed (staged's, else ws.git's); the smoke step's seconds."""
    return preflight.run_checks(ws, ground, staged=staged, echo=echo, token=token, description=description,
                                hypothesis=hypothesis)


def after_commit(ws: Opened, done: Committed, how: str, *, queue: Callable[[str, str], Q],
                 held: lock.Lock | None = None, env: dict[str, str] | None = None) -> Record | Detached | Q:
    """Everything after the commit, in order; the record, the detached run, or what `queue` returned.

    held: the lock, when this process holds it already (`gitar try` in-process); else the run
    joins the lock of the `gitar try` that made the commit (done.token) or takes its own.
    queue(sha, description) hands the commit to a remote's runner (how == QUEUE).
    env: the detached process's environment (by default this one's, where `gitar try` put the
    token and the hypothesis).
    """
    git = ws.git
    message = git.commit(done.sha).message
    description = subject(message)
    if held is not None:
        # A concurrent try is refused naming what runs: this commit, not the one it builds on.
        held.transfer(os.getpid(), commit=done.sha, description=description)
    if how == QUEUE:
        return queue(done.sha, description)
    plan = experiment.plan_attempt(ws, done.sha, done.branch, description, done.run_id, done.hypothesis)
    plan = dataclasses.replace(plan, smoke_s=done.smoke_s)
    rejected = reject_unfit(ws, plan, message)
    if rejected is not None:
        return rejected
    if how == DETACH:
        spawn_detached(ws, plan, env)
        return Detached(plan)
    if held is not None:
        # `gitar try` in-process: no other process to outlive (_execute's stop_if_gone would watch
        # nobody), and experiment.execute holds the stop signals for the run and its record itself.
        return experiment.execute(ws, plan)
    try:
        joined = ws.lock(purpose="experiment", token=done.token, commit=done.sha,
                                  description=description)
    except GitarError as e:
        # Someone else's experiment holds the GPU: this commit cannot be measured now.
        return experiment.finish(ws, plan, experiment.rejected(git, plan, str(e)))
    try:
        # Joined from the `gitar try` that made the commit: the run stops if that `gitar try` dies.
        starter = joined.take_over(commit=done.sha, description=description)
        return _execute(ws, plan, starter)
    finally:
        joined.release()


def _execute(ws: Opened, plan: Plan, starter: lock.LockInfo | None) -> Record:
    """The run of a hook under the lock it took (starter None) or joined from `gitar try` (starter)."""
    # A stop arriving between the run and its record waits for the record (signals.stop_signals_held).
    with signals.stop_signals_held(), \
            signals.stop_if_gone(starter.pid if starter else None, starter.pid_start if starter else None):
        return experiment.execute(ws, plan)


def reject_unfit(ws: Opened, plan: Plan, message: str) -> Record | None:
    """Record a commit whose message or hypothesis breaks the rules as rejected (pinned, branch back

    to the best) and return that record; None when the message is fine.
    """
    record = unfit_message(ws.git, plan, message)
    if record is None:
        return None
    ws.notebook.pin(plan.commit, record.description)
    return experiment.finish(ws, plan, record)


def unfit_message(git: Git, plan: Plan, message: str) -> Record | None:
    """The rejected record of a commit whose message or hypothesis breaks the rules, else None.

    The commit-msg hook refuses such a message before the commit exists; this is for commits
    that skipped it (`--no-verify`, hooks installed by an older gitar, pushed from elsewhere).
    They are never trained: the record, with the description escaped and clipped, says why.
    """
    try:
        check_message(message)
        if plan.hypothesis is not None:
            check_text(plan.hypothesis, HYPOTHESIS)
    except GitarError as e:
        shown = dataclasses.replace(
            plan, description=safe(subject(message))[:DESCRIPTION_CHARS] or "(no description)",
            hypothesis=safe(plan.hypothesis)[:NOTE_CHARS] if plan.hypothesis else None)
        return experiment.rejected(git, shown, f"not run: {e.message}")
    return None


def spawn_detached(ws: Opened, plan: Plan, env: dict[str, str] | None = None) -> None:
    """Start the run in its own session and return once it has taken the lock over.

    env carries the lock token (GITAR_LOCK_TOKEN) and the hypothesis (GITAR_HYPOTHESIS);
    by default the hook's own environment, where `gitar try` put them.
    """
    git, paths = ws.git, ws.paths
    paths.logs.mkdir(parents=True, exist_ok=True)
    out = open(paths.runner_log(plan.commit, plan.run_id), "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitar.loop.hook_entry", "detached", plan.run_id, plan.commit, plan.branch],
        cwd=git.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, env=env if env is not None else os.environ.copy())
    out.close()
    deadline = time.time() + DETACH_START_TIMEOUT_S
    while time.time() < deadline:
        current = state.load(paths)
        if current is not None and current.run_id == plan.run_id:
            return
        if proc.poll() is not None:
            return  # it already finished (or failed and recorded why)
        time.sleep(0.05)


def run_detached(ws: Opened, done: Committed) -> Record:
    """The detached process: take the lock over from `gitar try` first, then plan and run."""
    git = ws.git
    description = subject(git.commit(done.sha).message)
    held = ws.lock(purpose="experiment", token=done.token, commit=done.sha, description=description)
    held.take_over(commit=done.sha, description=description)  # it outlives that `gitar try`: no stop_if_gone
    try:
        plan = experiment.plan_attempt(ws, done.sha, done.branch, description, done.run_id, done.hypothesis)
        return experiment.execute(ws, plan)
    finally:
        held.release()
