"""`gitar try "desc"`: commit the agent's change so the hooks preflight, run, judge and record it.

This command adds what a plain `git commit` lacks: refusals before anything is
committed, staging of the agent-owned files only, the lock, a live progress line on
a terminal (hook output is buffered until the hook ends), and one result line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gitar import experiment, lock, state
from gitar.commands.common import Workspace, open_workspace
from gitar.config import MODEL_FILE
from gitar.errors import ExitCode, GitarError
from gitar.paths import Paths
from gitar.preflight import check_model_source, check_source, owned
from gitar.records import Record

MAX_DESCRIPTION = 4096  # a commit subject plus a paragraph; a megabyte is a mistake, not a description


@dataclass(frozen=True)
class Started:
    """A detached run that is under way; `gitar wait` picks it up."""

    run_id: str
    commit: str
    description: str
    log: str


def check_description(description: str, what: str = "the description") -> str:
    text = description.strip()
    if not text:
        raise GitarError(f'{what} is empty; say what you changed: gitar try "what I changed"')
    if len(text) > MAX_DESCRIPTION:
        raise GitarError(f"{what} has {len(text)} characters; keep it under {MAX_DESCRIPTION}")
    if "\0" in text:
        raise GitarError(f"{what} contains a NUL byte; pass plain text")
    return text


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
                   start: str | Path = ".", on_progress: Callable[[Paths], None] | None = None) -> Record | Started:
    text = check_description(description)
    why = check_description(hypothesis, "--hypothesis") if hypothesis is not None else None
    ws = open_workspace(start)
    if (op := ws.git.operation_in_progress()) is not None:
        raise GitarError(f"{op} is in progress; finish or abort it before trying an experiment")
    files = changed_agent_files(ws)
    _check_cheaply(ws, files)
    paths = Paths(ws.git.common_dir)
    token = lock.new_token()
    held = lock.acquire(ws.git.common_dir, purpose="try", token=token, commit=ws.head)
    run_id = experiment.new_run_id()
    transferred = False
    try:
        ws.git.run("add", "-A", "--", *files)
        env = {"GITAR_LOCK_TOKEN": token, "GITAR_RUN_ID": run_id, "GITAR_DETACH": "1" if detach else "0",
               "GITAR_HYPOTHESIS": why or "",
               # the hooks call `python`: make it this interpreter, the one with gitar and torch
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        output = _commit(ws, text, files, env, paths, on_progress)
        new_head = ws.git.ref_target(f"refs/heads/{ws.branch}")
        record = experiment.read_result(ws.git, run_id)
        if record is not None:
            return record
        current = state.load(paths)
        if detach and current is not None and current.run_id == run_id:
            transferred = True
            return Started(run_id, current.commit, text, current.log)
        if new_head == ws.head:
            raise GitarError(_refusal(output))
        raise GitarError("the commit was made but no experiment ran; are the hooks installed? "
                         f"run `gitar init {ws.branch.split('/', 1)[-1]}` again. git said: {_tail(output)}",
                         ExitCode.INTERNAL)
    finally:
        if not transferred:
            held.release()


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
            check_model_source(full.read_bytes(), ws.ground, full)


def _commit(ws: Workspace, text: str, files: list[str], env: dict[str, str], paths: Paths,
            on_progress: Callable[[Paths], None] | None) -> str:
    # --cleanup=whitespace: the default would drop description lines starting with "#".
    args = ["commit", "--cleanup=whitespace", "-F", "-", "--", *files]
    with tempfile.TemporaryFile() as out:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_INDEX")}
        full_env.update(env)
        proc = subprocess.Popen(["git", *args], cwd=ws.git.root, env=full_env, stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        proc.stdin.write(text.encode())
        proc.stdin.close()
        stop = threading.Event()
        watcher = None
        if on_progress is not None:
            callback = on_progress

            def watch() -> None:
                while not stop.wait(0.5):
                    callback(paths)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            proc.wait()
        except KeyboardInterrupt:
            # The hooks got the same Ctrl-C: let them record the attempt as aborted first.
            proc.wait()
            raise
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        out.seek(0)
        return out.read().decode("utf-8", "replace")


def _refusal(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines()]
    reasons = [ln[len("gitar: refused: "):] for ln in lines if ln.startswith("gitar: refused: ")]
    if reasons:
        return reasons[-1]
    return f"the commit was refused: {_tail(output)}"


def _tail(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) if lines else "no output"
