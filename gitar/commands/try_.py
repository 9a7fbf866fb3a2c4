"""`gitar try "desc"`: commit the agent's change so the hooks preflight, run, judge and record it.

This command adds what a plain `git commit` lacks: refusals before anything is
committed, staging of the agent-owned files only, the lock, a live progress line on
a terminal (hook output is buffered until the hook ends), and one result line.

When the hooks a commit would run are only gitar's own (gitar/loop/own_hooks.py), this
process runs both hook stages itself — the same preflight on an index holding
exactly what is committed, then the same run — and commits with the hooks off: the
hooks would only start three more Python processes to reach the same code. Any
other hook configured, and the commit goes through the hooks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gitar import shared
from gitar.config.schema import MODEL_FILE, owned
from gitar.errors import ExitCode, GitarError
from gitar.host import confine, lock, signals, state
from gitar.loop import attempt, experiment, trust
from gitar.loop.judge import current_best
from gitar.loop.own_hooks import foreign_hooks
from gitar.loop.preflight import check_model_source, check_source
from gitar.loop.workspace import Workspace, open_workspace
from gitar.paths import Paths
from gitar.sharing import remote_queue
from gitar.sharing.remote_queue import Queued
from gitar.sharing.sync import check_remote
from gitar.store.records import Record
from gitar.store.refs import branch_ref
from gitar.text import DESCRIPTION, HYPOTHESIS, check_text, subject


@dataclass(frozen=True)
class Started:
    """A detached run that is under way; `gitar wait` picks it up."""

    run_id: str
    commit: str
    description: str
    log: str


def changed_agent_files(ws: Workspace) -> list[str]:
    """Refuse when user-owned files changed; return the changed agent-owned files."""
    policy = ws.ground.experiment
    changes = ws.git.changes()
    for c in changes:
        if owned(c.path, policy.user_owned):
            raise GitarError(f"{c.path} is user-owned and modified; an experiment may change only "
                             f"{', '.join(policy.agent_owned)} — restore it with `git restore --staged --worktree -- {c.path}`")
    agent = sorted({c.path for c in changes if owned(c.path, policy.agent_owned)})
    if not agent:
        raise GitarError(f"nothing to try: {', '.join(policy.agent_owned)} are unchanged since "
                         f"{ws.head[:7]}; edit one of them first")
    return agent


def try_experiment(description: str, *, detach: bool = False, hypothesis: str | None = None,
                   start: str | Path = ".", on_progress: Callable[[Paths], None] | None = None,
                   remote: str | None = None) -> Record | Started | Queued:
    """Refuse early, commit the agent's files, and run the experiment here, detached, or on a remote's runner.

    With `remote`, the commit is preflighted here and pushed for the remote's runner instead of
    run (remote_queue.py); the caller waits for the verdict or returns at once.
    """
    text = check_text(description, DESCRIPTION)
    why = check_text(hypothesis, HYPOTHESIS) if hypothesis is not None else None
    if remote is not None and detach:
        raise GitarError("--detach runs the experiment here in the background; with --remote use --no-wait")
    ws = open_workspace(start)
    if remote is not None:
        check_remote(ws.git, remote)
    if (op := ws.git.operation_in_progress()) is not None:
        raise GitarError(f"{op} is in progress; finish or abort it before trying an experiment")
    files = changed_agent_files(ws)
    _check_cheaply(ws, files)
    confine.check_available(ws.ground)
    if (ws.git.gitdir / "index.lock").exists():
        raise GitarError(f"another git process is using this repository ({ws.git.gitdir / 'index.lock'} "
                         "exists); wait for it, or remove that file if no git command is running")
    token = lock.new_token()
    # No commit yet: the lock names the description until the commit exists (then the commit too).
    held = ws.lock(purpose="try", token=token, description=text)
    this = _Attempt(ws, text, why, files, held, experiment.new_run_id(), detach, remote)
    outcome: Record | Started | Queued | None = None
    try:
        # Before anything is committed (and after the lock, so a running experiment is said first):
        # the bar this attempt will face must be gitar's own (trust.py).
        best = current_best(ws.notebook, ws.branch, ws.head)
        trust.check_judging(ws.notebook, ws.branch, ws.head, ws.head, best.commit if best else None,
                            unmeasured_ok=remote is not None)
        with _index_restored_unless_committed(ws):
            ws.git.run("add", "-A", "--", *files)
            with _watching(ws.paths, on_progress):
                outcome = this.in_process() if foreign_hooks(ws.git) is None else this.through_hooks()
        return outcome
    finally:
        if not isinstance(outcome, Started):  # a detached runner holds the lock now
            held.release()


@dataclass(frozen=True)
class _Attempt:
    ws: Workspace
    text: str
    hypothesis: str | None
    files: list[str]
    held: lock.Lock
    run_id: str
    detach: bool
    remote: str | None = None  # queue the commit for this remote's runner instead of running it here

    @property
    def token(self) -> str:
        return self.held.token

    @property
    def paths(self) -> Paths:
        return self.ws.paths

    def in_process(self) -> Record | Started | Queued:
        """Both hook stages in this process; the commit itself with the hooks off."""
        git = self.ws.git
        self.paths.base.mkdir(parents=True, exist_ok=True)
        index = self.paths.base / f"index-{self.run_id}"
        to_index = {"GIT_INDEX_FILE": str(index)}
        try:
            # The commit's own index: HEAD plus the agent's files, nothing else anyone staged.
            git.run("read-tree", "HEAD", env=to_index)
            git.run("add", "-A", "--", *self.files, env=to_index)
            smoke_s = attempt.guard(self.ws, self.ws.ground, staged=git.with_index(index), token=self.token, echo=False,
                                    description=self.text, hypothesis=self.hypothesis)
            how = attempt.QUEUE if self.remote is not None else attempt.DETACH if self.detach else attempt.RUN
            env = {**os.environ, shared.LOCK_TOKEN: self.token, shared.HYPOTHESIS: self.hypothesis or ""}
            # From the commit until the run is under way, a stop request waits (see stop_signals_held);
            # the detached runner inherits the wait and ends it when its own run starts.
            with signals.stop_signals_held():
                done = attempt.Committed(sha=self._commit(index), branch=self.ws.branch, run_id=self.run_id,
                                         hypothesis=self.hypothesis, token=self.token, smoke_s=smoke_s)
                outcome = attempt.after_commit(self.ws, done, how, held=self.held, env=env,
                                               queue=self._queue)
            return self._outcome(done.sha) if isinstance(outcome, attempt.Detached) else outcome
        finally:
            index.unlink(missing_ok=True)

    def _commit(self, index: Path) -> str:
        git = self.ws.git
        # --cleanup=whitespace: the default would drop description lines starting with "#".
        git.run("-c", f"core.hooksPath={os.devnull}", "commit", "--cleanup=whitespace", "--quiet", "-F", "-",
                env={"GIT_INDEX_FILE": str(index)}, input=self.text,
                advice="nothing was committed; your edits are untouched")
        sha = git.ref_target(branch_ref(self.ws.branch))
        if sha is None or sha == self.ws.head or git.commit(sha).parent_ids[0] != self.ws.head:
            raise GitarError(f"{self.ws.branch} moved during the commit (now {str(sha)[:7]}); "
                             "someone else commits here — nothing was run", ExitCode.INTERNAL)
        return sha

    def _queue(self, sha: str, description: str | None = None) -> Queued:
        git = self.ws.git
        description = subject(git.commit(sha).message) if description is None else description
        return remote_queue.queue(git, self.ws.branch, sha, description, str(self.remote))

    def through_hooks(self) -> Record | Started | Queued:
        env = {shared.LOCK_TOKEN: self.token, shared.RUN_ID: self.run_id, shared.DETACH: "1" if self.detach else "0",
               shared.HYPOTHESIS: self.hypothesis or "", shared.REMOTE: self.remote or "",
               # what the pre-commit stage notes a change the smoke step refuses under (no message yet there)
               shared.DESCRIPTION: self.text,
               # the hooks call `python`: make it this interpreter, the one with gitar and torch
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        with tempfile.TemporaryDirectory(prefix="gitar-try-") as tmp:
            refusal = Path(tmp) / "refusal.json"
            env[shared.REFUSAL_FILE] = str(refusal)
            output = _commit(self.ws, self.text, self.files, env)
            new_head = self.ws.git.ref_target(branch_ref(self.ws.branch))
            if new_head == self.ws.head and state.read_result(self.paths, self.run_id) is None:
                raise GitarError(_refusal(refusal, output))
        if self.remote is not None and new_head is not None:
            return self._queue(new_head)
        return self._outcome(new_head, output)

    def _outcome(self, sha: str | None, output: str = "") -> Record | Started:
        """The record if the run ended, the started run if it is detached and under way."""
        record = state.read_result(self.paths, self.run_id)
        if record is not None:
            return record
        current = state.load(self.paths)
        if self.detach and current is not None and current.run_id == self.run_id:
            return Started(self.run_id, current.commit, self.text, current.log)
        raise GitarError(f"the commit {str(sha)[:7]} was made but no experiment ran; are the hooks installed? "
                         f"run `gitar init {self.ws.branch.split('/', 1)[-1]}` again"
                         + (f". git said: {_tail(output)}" if output else ""), ExitCode.INTERNAL)


def _check_cheaply(ws: Workspace, files: list[str]) -> None:
    """The preflight's sub-second checks on the work tree, before anything is committed.

    The pre-commit hook runs them again on what is staged (it guards plain `git commit`
    too); here they spare a broken idea the commit and the hook start-up.
    """
    for path in files:
        full = ws.git.root / path
        if not full.is_file():
            continue  # a deletion: the hook's smoke step reports what it breaks
        if path.endswith(".py"):
            check_source(path, full.read_bytes())
        elif path == MODEL_FILE:
            check_model_source(full.read_bytes())


@contextmanager
def _index_restored_unless_committed(ws: Workspace) -> Iterator[None]:
    """Put git's index back byte for byte if the body ends in an exception before anything is committed.

    The agent's files are staged before the checks run (the real index must match the commit
    once it is made), so a refusal by the smoke step, a hook or the lock would otherwise leave
    them staged: `git checkout -- train.py` would then restore the refused edit instead of the
    committed file. A refusal changes nothing, so the index goes back as it was, with whatever
    the agent had staged itself. Under index.lock, as git writes it.
    """
    index = ws.git.gitdir / "index"
    try:
        saved: bytes | None = index.read_bytes()
    except FileNotFoundError:
        saved = None
    try:
        yield
    except BaseException:
        if ws.git.ref_target(branch_ref(ws.branch)) == ws.head:  # nothing committed
            _write_index(index, saved)
        raise


def _write_index(index: Path, content: bytes | None) -> None:
    lock_file = index.with_name(index.name + ".lock")
    try:
        fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # a git command is writing the index right now: it is theirs, not ours to overwrite
    with os.fdopen(fd, "wb") as out:
        out.write(content or b"")
    if content is None:
        index.unlink(missing_ok=True)
        lock_file.unlink()
    else:
        os.replace(lock_file, index)


@contextmanager
def _watching(paths: Paths, on_progress: Callable[[Paths], None] | None) -> Iterator[None]:
    """Call on_progress every half second from a thread while the body runs."""
    if on_progress is None:
        yield
        return
    callback = on_progress
    stop = threading.Event()

    def watch() -> None:
        # Stop signals are the main thread's: delivered to this thread, they would slip past its hold.
        signal.pthread_sigmask(signal.SIG_BLOCK, signals.STOP_SIGNALS)
        while not stop.wait(0.5):
            callback(paths)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def _commit(ws: Workspace, text: str, files: list[str], env: dict[str, str]) -> str:
    """`git commit` of the agent's files through the hooks; returns what git and the hooks printed."""
    # --cleanup=whitespace: the default would drop description lines starting with "#".
    args = ["commit", "--cleanup=whitespace", "-F", "-", "--", *files]
    with tempfile.TemporaryFile() as out:
        full_env = shared.environment(prefixes=("GIT_INDEX",), sets=env)
        proc = subprocess.Popen(["git", *args], cwd=ws.git.root, env=full_env, stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        proc.stdin.write(text.encode())
        proc.stdin.close()
        try:
            with signals.stop_signals_interrupt():
                proc.wait()
        except KeyboardInterrupt as stop:
            # A terminal's Ctrl-C reached the hooks too, a signal to gitar alone did not: pass it
            # on if need be, and return only once the run is recorded as aborted.
            signals.stop_hook_run(ws.paths, env.get(shared.RUN_ID, ""), proc, signals.signal_of(stop))
            raise
        out.seek(0)
        return out.read().decode("utf-8", "replace")


def _refusal(refusal: Path, output: str) -> str:
    """Why the commit did not happen: gitar's own hook says so in the refusal file; another
    hook (a formatter, a linter of the user's) only in what it printed."""
    try:
        message = json.loads(refusal.read_text(encoding="utf-8"))["message"]
        if isinstance(message, str):
            return message
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"the commit was refused: {_tail(output)}"


def _tail(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) if lines else "no output"
