"""The pre-commit stage: refuse a broken or out-of-bounds change in seconds, before any GPU time.

Checks, cheapest first: the ownership guard (only agent-owned files may be
committed on an experiment branch), the lock (one experiment at a time), the syntax
of every staged Python file, model.json as one JSON object (its schema is train.py's, which the
smoke step runs), and a CPU smoke step
that builds the model train.py + model.json define and runs one forward/backward.
Each failure is one line that says what to fix; the agent's edits stay untouched.
Under ground.json experiment.repeats "refuse", a change whose files an earlier attempt
already ran is refused before the smoke step (gitar/loop/repeats.py).

A change the smoke step refuses is an idea that failed: it is noted in the notebook
(record_refused) so `gitar memory` can warn against it, while the branch, the index
and the work tree stay exactly as they were.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitar import numbers, shared
from gitar.config.jsonfile import parse_json
from gitar.config.schema import MODEL_FILE, REPEATS_REFUSE, Ground, owned
from gitar.errors import ExitCode, GitarError
from gitar.host import confine, lock, runner
from gitar.host.logpump import LOG_PREFIX
from gitar.paths import Paths
from gitar.runtime.seed import read_seed
from gitar.store.git import Git
from gitar.text import DESCRIPTION_CHARS, NOTE_CHARS, safe

if TYPE_CHECKING:
    from gitar.loop.opened import Opened
    from gitar.loop.repeats import Change, Earlier

SMOKE_TIMEOUT_S = 120.0  # generous for the CPU; the default model's smoke step takes a few seconds
# A plain `git commit` reaches the pre-commit stage before git has its message.
NO_DESCRIPTION = "(a plain git commit: refused at pre-commit, before git had its message)"
_FRAME = re.compile(r'\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<func>.+)')
_TRACEBACK = "Traceback (most recent call last):"


class SmokeFailed(GitarError):
    """The smoke step ran the change and it failed: the idea itself is broken (not gitar, not the machine)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output  # what train.py printed, kept as the refused idea's log


def check_ownership(paths: list[str], ground: Ground) -> None:
    agent = ground.experiment.agent_owned
    for path in paths:
        if not owned(path, agent):
            who = "user-owned" if owned(path, ground.experiment.user_owned) else "not agent-owned"
            raise GitarError(f"{path} is {who}: on an experiment branch only {', '.join(agent)} may change; "
                             f"undo it with `git restore --staged --worktree -- {path}`")


def check_lock(paths: Paths, token: str | None = None) -> None:
    """No other experiment holds the lock (the holder's own commit passes its token)."""
    info = lock.read(paths.common_dir, paths.lock_name)
    if info is None or not info.alive():
        return
    if info.token and info.token == (token or os.environ.get(shared.LOCK_TOKEN)):
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


def check_model_source(raw: bytes) -> None:
    """model.json is one JSON object within the limits of a configuration file.

    That is all gitar needs of it. The schema belongs to train.py, whose loader rejects an
    unknown or mistyped key; the smoke step runs that loader, so a typo is still refused here.
    """
    if not isinstance(parse_json(raw, MODEL_FILE), dict):
        raise GitarError(f"{MODEL_FILE}: expected a JSON object at the top level (the hyperparameters train.py reads)")


def check_model(git: Git, paths: list[str]) -> None:
    if MODEL_FILE in paths:
        check_model_source(git.staged_blob(MODEL_FILE))


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
        env = shared.confined_env({shared.SMOKE: "1", shared.WORKSPACE: str(git.root)})
        command = runner.expand_command(ground.experiment.command)
        crash = Path(tmp) / ".gitar-smoke-crash.json"
        log = Path(logs) / "smoke.log"
        confined = confine.for_smoke(git, ground, command, Path(tmp), f"smoke-{uuid.uuid4().hex}")
        try:
            result = runner.run_confined(command, cwd=Path(tmp), env=env, log_path=log, crash_path=crash,
                                         timeout_s=SMOKE_TIMEOUT_S, grace_s=2.0, confined=confined,
                                         needs_val_bpb=False)
        except GitarError as e:
            raise GitarError(f"smoke step: {e.message}") from None
        output = log.read_text(errors="replace")
        if result.status == "timeout":
            raise SmokeFailed(f"smoke step: train.py took over {SMOKE_TIMEOUT_S:g} s for one step on CPU; "
                              "something blocks or the model is far too large", output)
        line = next((ln for ln in output.splitlines() if ln.startswith(shared.SMOKE_OK)), None)
        if result.status == "ok" and line:
            return line
        cause = (result.crash or {}).get("message") if (result.crash or {}).get("type") == "LimitExceeded" else None
        trainer = _trainer_output(output)
        if cause is None:
            where = failing_frame(trainer, Path(tmp), ground.experiment.agent_owned)
            cause = _smoke_error(runner.read_json_file(crash), trainer)
            if where is not None:
                cause = f"{where}: {cause}"
        raise SmokeFailed(f"smoke step failed: {safe(str(cause))}", output)


def _trainer_output(log: str) -> str:
    return "\n".join(ln for ln in log.splitlines() if not ln.startswith(LOG_PREFIX))


def _smoke_error(crash: dict[str, Any] | None, output: str) -> str:
    """The trainer's own crash record's type and first message line, else its last line: the
    record read as the runner reads one (bounded: train.py wrote it), not the one the runner
    derives from the exit code."""
    if crash is not None:
        lines = str(crash.get("message", "")).strip().splitlines()
        if lines:
            return f"{crash.get('type', 'Error')}: {lines[0][:300]}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"train.py exited without printing `{shared.SMOKE_OK}`"


def failing_frame(output: str, root: Path, agent_owned: tuple[str, ...]) -> str | None:
    """`train.py:LINE in FUNCTION` for the innermost frame of the agent's code in the last traceback.

    The traceback is the one Python (or train.py's own handler) printed: in the smoke log it is
    whole, where the crash record keeps only its last lines. Frames of torch, of prepare.py or
    of gitar's runtime are skipped; the agent's code is whatever agent_owned covers, at its path
    in the copy the smoke step ran from (root). Only a message: whatever train.py printed,
    nothing is decided by it. None when no frame of the agent's code is named.
    """
    lines = output.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == _TRACEBACK]
    # The last exception's own traceback first; a chained one before it names the same frames or older ones.
    for block in ((lines[starts[-1]:],) if starts else ()) + (lines,):
        found = _innermost(block, root, agent_owned)
        if found is not None:
            return found
    return None


def _innermost(lines: Iterable[str], root: Path, agent_owned: tuple[str, ...]) -> str | None:
    roots = {str(root), str(root.resolve())}
    found = None
    for ln in lines:
        m = _FRAME.fullmatch(ln.rstrip())
        if m is None:
            continue
        path = m["path"]
        for r in roots:
            if path.startswith(r + os.sep):
                path = path[len(r) + 1:]
                break
        else:
            if os.path.isabs(path):
                continue  # outside the copy: torch, the standard library, gitar
        path = path.removeprefix("./")
        if owned(path, agent_owned):
            found = f"{path}:{m['line']} in {m['func'][:80]}"  # frames run outermost to innermost
    return found


def run_checks(ws: Opened, ground: Ground, *, staged: Git | None = None, echo: bool = True,
               token: str | None = None, description: str | None = None,
               hypothesis: str | None = None) -> float | None:
    """Every check of the pre-commit stage on the index being committed; returns the smoke
    step's seconds (None when it did not run).

    staged: the repository as seen through the index being committed (`gitar try` commits
    from an index of its own); by default ws.git, whose index git commits.

    description and hypothesis are the change's (`gitar try` passes them; a plain commit has
    none yet): a change the smoke step refuses is recorded under them.
    """
    git = staged or ws.git
    read_seed()  # a bad $GITAR_SEED, which the run's seed starts from, is refused before the commit
    paths = git.staged_paths()
    check_ownership(paths, ground)
    confine.check_available(ground)
    check_lock(ws.paths, token)
    check_syntax(git, paths)
    check_model(git, paths)
    if not any(owned(p, ground.experiment.agent_owned) for p in paths):
        return None
    from gitar.loop import repeats

    # Under "run", a change is looked up only if the smoke step refuses it: one that passes is
    # looked up once, by the run (its record says what it repeats).
    change = repeats.Change.staged(git, ground) if ground.experiment.repeats == REPEATS_REFUSE else None
    earlier = repeats.check(ws, ground, change) if change is not None else None
    if not ground.experiment.smoke:
        return None
    t0 = time.time()
    try:
        line = smoke(git, ground)
    except SmokeFailed as e:
        change = change or repeats.Change.staged(git, ground)
        if earlier is None:
            earlier = repeats.find(ws, change, ground.experiment.agent_owned)
        raise SmokeFailed(e.message + record_refused(ws, git, e, change, earlier, description, hypothesis),
                          e.output) from None
    if echo:
        print(f"gitar: {line}", file=sys.stderr)
    return time.time() - t0


def record_refused(ws: Opened, git: Git, failure: SmokeFailed, change: Change, earlier: list[Earlier],
                   description: str | None, hypothesis: str | None) -> str:
    """Note a change the smoke step refused (git: seen through its index); returns what to add to
    the refusal line.

    The record (status rejected, kind smoke, the smoke error as its reason, no run, no number)
    goes on a commit of the refused index made only to hold it: pinned under
    refs/gitar/attempts/ like every attempt, never on the branch, never trained. The branch,
    git's index and the work tree are untouched, so the refusal still changes nothing the
    agent works with; `gitar log` shows the record and `gitar memory` lists it. Written with
    the notebook's writer, so the ledger knows the line as gitar's.
    """
    from gitar.loop import repeats, run_record
    from gitar.store.records import REJECTED, SMOKE

    # From `gitar try`, checked by the text rule already; from the environment, anyone's: escaped.
    text = safe(description or os.environ.get(shared.DESCRIPTION) or NO_DESCRIPTION)[:DESCRIPTION_CHARS]
    why = safe(hypothesis or os.environ.get(shared.HYPOTHESIS) or "")[:NOTE_CHARS] or None
    try:
        head = git.resolve("HEAD")
        sha = _hold(git, head, text)
        run_id = uuid.uuid4().hex
        log = ws.paths.log(sha, run_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(failure.output, errors="replace")
        notebook = ws.notebook
        notebook.pin(sha, text)
        now = time.time()
        notebook.append(run_record.build(
            git, REJECTED, commit=sha, branch=change.branch, description=text, run_id=run_id, kind=SMOKE,
            started=now, reason=failure.message, hypothesis=why, parent=head, harness_sha256=change.harness,
            ended=numbers.iso_time(now), agent_sha256=change.content, repeat_of=repeats.summary(earlier),
            log=str(log)))
    except (GitarError, OSError) as e:  # the refusal stands either way; only the note is missing
        return f" (could not note it in the notebook: {getattr(e, 'message', None) or e})"
    return f"; noted as rejected {sha[:7]} (`gitar log`; never on the branch)"


def _hold(git: Git, head: str, message: str) -> str:
    """A commit of the index being checked, on top of HEAD, that no branch points at.

    Written from a copy of that index (write-tree may update the index it reads, and this one
    is git's or `gitar try`'s); only objects are added to the repository.
    """
    index = git.index_file or Path(os.environ.get("GIT_INDEX_FILE") or git.gitdir / "index")
    if not index.is_absolute():
        index = git.root / index
    with tempfile.TemporaryDirectory(prefix="gitar-refused-") as tmp:
        copy = Path(tmp) / "index"
        shutil.copyfile(index, copy)
        tree = git.out("write-tree", env={"GIT_INDEX_FILE": str(copy)})
    sha = git.out("commit-tree", tree, "-p", head, "-F", "-", input=message + "\n")
    if len(sha) < 40:
        raise GitarError(f"git commit-tree printed {sha!r}, not a commit id", ExitCode.INTERNAL)
    return sha
