"""What the git hooks run (hooks/gitar-hook calls `python -m gitar.loop.hook_entry STAGE`).

- `check` (pre-commit): preflight; a non-zero exit refuses the commit.
- `message FILE` (commit-msg): the message's first line is the experiment's description, so it
  obeys the description rule (gitar/text.py); a non-zero exit refuses the commit. The
  pre-commit stage runs before git has the message, so only this stage can refuse it while
  nothing is committed yet.
- `run` (post-commit): the experiment for HEAD. git ignores a post-commit hook's exit
  code, so everything that matters is in the record this writes.
- `detached RUN_ID` : the same run in a background process for `gitar try --detach`.

On branches outside the experiment prefix the hooks do nothing: a person's commits
on main are not experiments. The hooks are the loop: a plain `git commit` on an
experiment branch is judged and recorded exactly as `gitar try` would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from gitar import shared
from gitar.config.schema import GROUND_FILE, Ground, ground_at
from gitar.errors import ExitCode, GitarError, save_traceback
from gitar.files import write_json_atomic
from gitar.host import lock, signals, state
from gitar.loop import experiment, integrity
from gitar.loop.recovery import recover
from gitar.loop.result_line import result_line
from gitar.paths import Paths
from gitar.store.git import Git, gitar_dir
from gitar.store.records import Notebook, Record
from gitar.text import DESCRIPTION_CHARS, HYPOTHESIS, NOTE_CHARS, check_message, check_text, safe, subject

DETACH_START_TIMEOUT_S = 30.0


# The branches gitar makes by default: one of these without gitar's files is a workspace half set
# up (files deleted, or copied in by hand and never committed), never a branch to pass in silence.
DEFAULT_BRANCH_PREFIX = "autoresearch/"


def _experiment_branch(git: Git) -> tuple[str, Ground] | None:
    branch = git.current_branch()
    if branch is None or git.head_is_unborn():
        return None
    head = git.resolve("HEAD")
    if git.blob_at(head, GROUND_FILE) is None:
        if branch.startswith(DEFAULT_BRANCH_PREFIX) or integrity.base_commit(git, branch) is not None:
            raise GitarError(f"{branch} has no {GROUND_FILE} at HEAD ({head[:7]}), so gitar cannot check or run "
                             "this experiment: commit gitar's workspace files (ground.json, model.json, "
                             ".pre-commit-config.yaml, hooks/gitar-hook) on this branch, or commit with "
                             "`git commit --no-verify` to leave gitar out")
        return None
    ground = ground_at(git, head)
    if not ground.experiment.is_experiment_branch(branch):
        return None
    missing = [f for f in shared.HOOK_FILES if git.blob_at(head, f) is None]
    if missing:
        raise GitarError(f"{branch} has no {missing[0]} at HEAD ({head[:7]}), so its hooks are not gitar's: "
                         "run `gitar init TAG` on the branch you started from (it adds and commits gitar's files) "
                         "and experiment on the branch it makes")
    return branch, ground


def stage_check() -> int:
    git = Git.discover()
    found = _experiment_branch(git)
    if found is None:
        return 0
    _, ground = found
    for line in recover(git):
        print(f"gitar: {safe(line)}", file=sys.stderr)
    from gitar.loop import preflight

    preflight.run_checks(git, ground)
    return 0


def stage_message(path: str) -> int:
    """commit-msg: refuse a message whose subject is no description (a plain `git commit` on the branch)."""
    git = Git.discover()
    if _experiment_branch(git) is None:
        return 0
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            message = f.read()
    except OSError as e:
        raise GitarError(f"cannot read the commit message {path}: {e.strerror}") from None
    check_message(message)
    return 0


def reject_unfit(git: Git, plan: experiment.Plan, message: str) -> Record | None:
    """Record a commit whose message or hypothesis breaks the rules as rejected (pinned, branch back

    to the best) and return that record; None when the message is fine.
    """
    record = unfit_message(git, plan, message)
    if record is None:
        return None
    Notebook(git).pin(plan.commit, record.description)
    return experiment.finish(git, plan, record)


def unfit_message(git: Git, plan: experiment.Plan, message: str) -> Record | None:
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


def stage_run() -> int:
    git = Git.discover()
    found = _experiment_branch(git)
    if found is None:
        return 0
    branch, _ = found
    if os.environ.get(shared.REMOTE):
        print(f"gitar: queued for the runner of {os.environ[shared.REMOTE]}")
        return 0
    sha = git.resolve("HEAD")
    message = git.commit(sha).message
    description = subject(message)
    run_id = os.environ.get(shared.RUN_ID) or experiment.new_run_id()
    token = os.environ.get(shared.LOCK_TOKEN)
    plan = experiment.plan_attempt(git, sha, branch, description, run_id, os.environ.get(shared.HYPOTHESIS))
    rejected = reject_unfit(git, plan, message)
    if rejected is not None:
        print(f"gitar: {safe(result_line(rejected))}")
        return 0

    if os.environ.get(shared.DETACH) == "1":
        return spawn_detached(git, plan)

    try:
        held = lock.acquire_for(git, purpose="experiment", token=token, commit=sha, description=description)
    except GitarError as e:
        # Someone else's experiment holds the GPU: this commit cannot be measured now.
        record = experiment.finish(git, plan, experiment.rejected(git, plan, str(e)))
        print(f"gitar: {safe(result_line(record))}")
        return 0
    # Joined from the `gitar try` that made the commit: from now on the lock names this process,
    # so it never looks stale while the run goes on, and the run stops if that `gitar try` dies.
    starter = None if held.owned else held.info
    try:
        if starter is not None:  # and name this commit, not the one `gitar try` started from
            held.transfer(os.getpid(), commit=sha, description=description)
        # A stop arriving between the run and its record waits for the record (signals.stop_signals_held).
        with signals.stop_signals_held(), \
                signals.stop_if_gone(starter.pid if starter else None, starter.pid_start if starter else None):
            record = experiment.execute(git, plan)
    finally:
        held.release()
    print(f"gitar: {safe(result_line(record))}")
    return 0


def spawn_detached(git: Git, plan: experiment.Plan, env: dict[str, str] | None = None) -> int:
    """Start the run in its own session and return once it has taken the lock over.

    env carries the lock token (GITAR_LOCK_TOKEN) and the hypothesis (GITAR_HYPOTHESIS);
    by default the hook's own environment, where `gitar try` put them.
    """
    paths = Paths.of(git)
    paths.logs.mkdir(parents=True, exist_ok=True)
    out = open(paths.logs / f"{plan.commit[:12]}-{plan.run_id[:8]}.runner.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitar.loop.hook_entry", "detached", plan.run_id, plan.commit, plan.branch],
        cwd=git.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, env=env if env is not None else os.environ.copy())
    out.close()
    deadline = time.time() + DETACH_START_TIMEOUT_S
    while time.time() < deadline:
        current = state.load(paths)
        if current is not None and current.run_id == plan.run_id:
            return 0
        if proc.poll() is not None:
            return 0  # it already finished (or failed and recorded why)
        time.sleep(0.05)
    return 0


def stage_detached(run_id: str, sha: str, branch: str) -> int:
    git = Git.discover()
    token = os.environ.get(shared.LOCK_TOKEN)
    description = subject(git.commit(sha).message)
    held = lock.acquire_for(git, purpose="experiment", token=token, commit=sha, description=description)
    held.transfer(os.getpid(), commit=sha, description=description)
    try:
        plan = experiment.plan_attempt(git, sha, branch, description, run_id, os.environ.get(shared.HYPOTHESIS))
        experiment.execute(git, plan)
    finally:
        held.release()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["check"]:
            return stage_check()
        if args[:1] == ["message"] and len(args) == 2:
            return stage_message(args[1])
        if args[:1] == ["run"]:
            return stage_run()
        if args[:1] == ["detached"] and len(args) == 4:
            return stage_detached(args[1], args[2], args[3])
    except GitarError as e:
        refused = args[:1] in (["check"], ["message"])
        if refused and os.environ.get(shared.REFUSAL_FILE):
            # `gitar try` committed through the hooks: it reports this refusal as its own (exit 2).
            with contextlib.suppress(OSError):
                write_json_atomic(Path(os.environ[shared.REFUSAL_FILE]), {"message": e.message})
        print(f"gitar: refused: {safe(e.message)}" if refused else f"gitar: error: {safe(e.message)}",
              file=sys.stderr)
        return 1 if e.code != ExitCode.OK else 0
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception as e:
        # As the CLI does: one line, the traceback saved, exit INTERNAL (a pre-commit refusal too).
        where = save_traceback(gitar_dir())
        print(f"gitar: internal error: {safe(f'{type(e).__name__}: {e}')} (traceback: {where})", file=sys.stderr)
        return int(ExitCode.INTERNAL)
    print("usage: python -m gitar.loop.hook_entry check|message FILE|run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
