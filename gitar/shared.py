"""Every name gitar's processes share: environment variables and the files of a run.

`gitar try`, the git hooks it commits through, the detached run, train.py in its sandbox and
gitar's evaluator are separate processes; what passes between them goes through the
environment and through files. Each name is spelled once, here, so a reader can see the
whole contract in one place and no two modules can drift apart on a spelling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# --- Between `gitar try`, the hooks and the detached run -----------------------------------
LOCK_TOKEN = "GITAR_LOCK_TOKEN"  # the lock `gitar try` holds; its hooks run under it instead of waiting
RUN_ID = "GITAR_RUN_ID"  # the run the post-commit stage records (chosen by `gitar try`, so it can wait)
DETACH = "GITAR_DETACH"  # "1": the post-commit stage starts the run in the background (`try --detach`)
HYPOTHESIS = "GITAR_HYPOTHESIS"  # `try --hypothesis`, carried into the record
DESCRIPTION = "GITAR_DESCRIPTION"  # `gitar try`'s description: a smoke refusal is noted under it (no message yet)
REMOTE = "GITAR_REMOTE"  # `try --remote`: the remote's runner measures the commit, not this machine
REFUSAL_FILE = "GITAR_REFUSAL_FILE"  # where the pre-commit stage writes why it refused, for `gitar try`

# --- Into train.py (and the smoke step) -------------------------------------------------------
WORKSPACE = "GITAR_WORKSPACE"  # the workspace whose ground.json and data the snapshot uses
SEED = "GITAR_SEED"  # the run's seed (repeats of the best get seeds of their own)
COMMIT = "GITAR_COMMIT"  # the commit being measured, for the trainer's log
SMOKE = "GITAR_SMOKE"  # "1": the preflight's CPU smoke step, one step and out
EXPORT_PATH = "GITAR_EXPORT_PATH"  # where train.py saves the trained model for gitar's evaluation
CRASH_FILE = "GITAR_CRASH_FILE"  # where a failing trainer or evaluator writes its crash record
# --- Out of it -----------------------------------------------------------------------------
# The line a smoke step that passed starts with (gitar/runtime/smoke.py, or the launcher stopping
# an upstream-style train.py): the preflight looks for it. Only a fast check for the agent's own
# sake: no number rests on it, the real run is measured by gitar's evaluation.
SMOKE_OK = "smoke: ok"

# --- Of the runner --------------------------------------------------------------------------
RUNNER_KEY = "GITAR_RUNNER_KEY"  # the private key `gitar ci` signs records with (never inside a sandbox)

# --- Files of one run, under .git/gitar/runs/<key>/ (gitar/loop/integrity.py EvaluationRun) ---
EXPORT_FILE = "model.pt2"  # out/: the trainer's export; eval/: gitar's private copy of it
CRASH_RECORD = "crash.json"  # out/: the trainer's crash record; result/: the evaluator's
RUNNING_FILE = "running.json"  # .git/gitar/ of a worktree: the experiment it runs now (gitar/host/state.py)


def environment(*, prefixes: tuple[str, ...] = (), names: tuple[str, ...] = (),
                sets: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment less every variable named in `names` or starting with one of
    `prefixes`, plus `sets`: the one recipe for what a child process gitar starts inherits."""
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(prefixes)}
    env.update(sets or {})
    return env


def confined_env(sets: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process gitar confines (trainer, smoke step, evaluator).

    The caller's environment without git's variables (a hook's GIT_INDEX_FILE, GIT_DIR...) and
    without any of gitar's own (a lock token, another run's paths), plus exactly `sets`: what
    the process is told is what gitar chose for it, nothing it inherited by accident.
    """
    return environment(prefixes=("GIT_", "GITAR_"), sets=sets)


# --- What makes a repository's hooks gitar's --------------------------------------------------
# The files beside ground.json that `gitar init` adds and every hook and command checks at HEAD.
HOOK_FILES = (".pre-commit-config.yaml", "hooks/gitar-hook")
