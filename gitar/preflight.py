"""The pre-commit stage: refuse a broken or out-of-bounds change in seconds, before any GPU time.

Checks, cheapest first: the ownership guard (only agent-owned files may be
committed on an experiment branch), the lock (one experiment at a time), the syntax
of every staged Python file, model.json against the schema, and a CPU smoke step
that builds the model train.py + model.json define and runs one forward/backward.
Each failure is one line that says what to fix; the agent's edits stay untouched.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from gitar import confine, lock, runner
from gitar.config import MODEL_FILE, Ground, parse_model
from gitar.errors import GitarError
from gitar.git import Git
from gitar.paths import Paths
from gitar.validate import parse_json

SMOKE_TIMEOUT_S = 120.0  # generous for the CPU; the default model's smoke step takes a few seconds


def owned(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether a repository path falls under an ownership list ("dir/" covers a whole directory)."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in patterns)


def check_ownership(paths: list[str], ground: Ground) -> None:
    agent = ground.experiment.agent_owned
    for path in paths:
        if not owned(path, agent):
            who = "user-owned" if owned(path, ground.experiment.user_owned) else "not agent-owned"
            raise GitarError(f"{path} is {who}: on an experiment branch only {', '.join(agent)} may change; "
                             f"undo it with `git restore --staged --worktree -- {path}`")


def check_lock(git: Git, token: str | None = None) -> None:
    """No other experiment holds the lock (the holder's own commit passes its token)."""
    info = lock.read(git.common_dir, Paths.of(git).lock_name)
    if info is None or not info.alive():
        return
    if info.token and info.token == (token or os.environ.get(lock.TOKEN_ENV)):
        return
    raise GitarError(lock.held_message(info, "wait for it with `gitar wait`, then commit again"))


def check_source(path: str, source: bytes) -> None:
    """One Python file compiles; otherwise one line naming the file and line."""
    if b"\0" in source:  # compile() would blame a line it cannot name
        raise GitarError(f"{path} is not Python source (it contains NUL bytes: a binary file?); "
                         f"restore it with `git checkout -- {path}`")
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f" line {e.lineno}" if e.lineno else ""
        raise GitarError(f"syntax error in {path}{where}: {e.msg}; fix it and try again") from None
    except ValueError as e:  # e.g. null bytes: not a Python source file
        raise GitarError(f"{path} is not Python source ({e}); restore it with `git checkout -- {path}`") from None


def check_syntax(git: Git, paths: list[str]) -> None:
    for path in paths:
        if path.endswith(".py"):
            check_source(path, git.staged_blob(path))


def check_model_source(raw: bytes, ground: Ground, where: Path) -> None:
    """model.json parses and validates against the schema and ground.json."""
    parse_model(parse_json(raw, MODEL_FILE), where, ground)


def check_model(git: Git, paths: list[str], ground: Ground) -> None:
    if MODEL_FILE in paths:
        check_model_source(git.staged_blob(MODEL_FILE), ground, git.root / MODEL_FILE)


def smoke(git: Git, ground: Ground) -> str:
    """Run the staged train.py in smoke mode from a copy of the index; returns its `smoke:` line.

    The smoke step runs the agent's code as much as training does, so it runs in the same
    sandbox (without any data) and no process it starts outlives it.
    """
    with tempfile.TemporaryDirectory(prefix="gitar-smoke-") as tmp, \
            tempfile.TemporaryDirectory(prefix="gitar-smoke-log-") as logs:
        # The index, not the work tree: an untracked module that train.py imports would be
        # missing in the real run too, so it must be missing here.
        git.run("checkout-index", "-a", f"--prefix={tmp}/", keep_hook_env=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({"GITAR_SMOKE": "1", "GITAR_WORKSPACE": str(git.root)})
        env.pop("GITAR_EXPORT_PATH", None)
        command = runner.expand_command(ground.experiment.command)
        crash = Path(tmp) / ".gitar-smoke-crash.json"
        log = Path(logs) / "smoke.log"
        confined = confine.for_smoke(git, ground, command, Path(tmp), f"smoke-{uuid.uuid4().hex}")
        try:
            result = runner.run_training(command, cwd=Path(tmp), env=env, log_path=log, crash_path=crash,
                                         timeout_s=SMOKE_TIMEOUT_S, grace_s=2.0, confined=confined,
                                         needs_val_bpb=False)
        except GitarError as e:
            raise GitarError(f"smoke step: {e.message}") from None
        if result.status == "timeout":
            raise GitarError(f"smoke step: train.py took over {SMOKE_TIMEOUT_S:g} s for one step on CPU; "
                             "something blocks or the model is far too large")
        output = log.read_text(errors="replace")
        line = next((ln for ln in output.splitlines() if ln.startswith("smoke: ok")), None)
        if result.status == "ok" and line:
            return line
        cause = (result.crash or {}).get("message") if (result.crash or {}).get("type") == "LimitExceeded" else None
        raise GitarError(f"smoke step failed: {cause or _smoke_error(crash, _trainer_output(output))}")


def _trainer_output(log: str) -> str:
    # The log's own [gitar] header and footer lines are not the trainer's words.
    return "\n".join(ln for ln in log.splitlines() if not ln.startswith("[gitar] "))


def _smoke_error(crash_file: Path, output: str) -> str:
    try:
        crash = json.loads(crash_file.read_text())
        return f"{crash.get('type', 'Error')}: {str(crash.get('message', '')).strip().splitlines()[0][:300]}"
    except (OSError, ValueError, IndexError, AttributeError, RecursionError):  # train.py wrote it: anything
        pass
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "train.py exited without printing `smoke: ok`"


def run_checks(git: Git, ground: Ground, *, echo: bool = True, token: str | None = None) -> float | None:
    """Every check on what is staged; returns the smoke step's seconds (None when it did not run)."""
    paths = git.staged_paths()
    check_ownership(paths, ground)
    confine.check_available(ground)
    check_lock(git, token)
    check_syntax(git, paths)
    check_model(git, paths, ground)
    if ground.experiment.smoke and any(owned(p, ground.experiment.agent_owned) for p in paths):
        t0 = time.time()
        line = smoke(git, ground)
        if echo:
            print(f"gitar: {line}", file=sys.stderr)
        return time.time() - t0
    return None
