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
import os
import sys
from pathlib import Path

from gitar import shared
from gitar.errors import ExitCode, GitarError, save_traceback
from gitar.files import write_json_atomic
from gitar.loop import attempt, experiment
from gitar.loop.opened import Opened
from gitar.loop.result_line import result_line
from gitar.loop.workspace import open_for_hook
from gitar.store.git import Git, gitar_dir
from gitar.store.records import Record
from gitar.text import check_message, safe


def stage_check() -> int:
    ws = open_for_hook(Git.discover(), recovering=True)
    if ws is None:
        return 0
    attempt.guard(ws, ws.ground)
    return 0


def stage_message(path: str) -> int:
    """commit-msg: refuse a message whose subject is no description (a plain `git commit` on the branch)."""
    if open_for_hook(Git.discover()) is None:
        return 0
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            message = f.read()
    except OSError as e:
        raise GitarError(f"cannot read the commit message {path}: {e.strerror}") from None
    check_message(message)
    return 0


def stage_run() -> int:
    ws = open_for_hook(Git.discover())
    if ws is None:
        return 0
    done = attempt.Committed(sha=ws.head, branch=ws.branch,
                             run_id=os.environ.get(shared.RUN_ID) or experiment.new_run_id(),
                             hypothesis=os.environ.get(shared.HYPOTHESIS), token=os.environ.get(shared.LOCK_TOKEN))
    remote = os.environ.get(shared.REMOTE)
    how = attempt.QUEUE if remote else attempt.DETACH if os.environ.get(shared.DETACH) == "1" else attempt.RUN

    def queued(sha: str, description: str) -> None:
        # `gitar try --remote` pushes the commit itself once the hooks are done.
        print(f"gitar: queued for the runner of {remote}")

    outcome = attempt.after_commit(ws, done, how, queue=queued)
    if isinstance(outcome, Record):
        print(f"gitar: {safe(result_line(outcome))}")
    return 0


def stage_detached(run_id: str, sha: str, branch: str) -> int:
    # No Workspace: HEAD may have moved on since the commit; the run needs only paths and notebook.
    attempt.run_detached(Opened.of(Git.discover()), attempt.Committed(sha=sha, branch=branch, run_id=run_id,
                                                hypothesis=os.environ.get(shared.HYPOTHESIS),
                                                token=os.environ.get(shared.LOCK_TOKEN)))
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
    print("usage: python -m gitar.loop.hook_entry check|message FILE|run|detached RUN_ID SHA BRANCH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
