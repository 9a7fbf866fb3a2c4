"""What keeps the number honest: the branch's pinned base, the harness hash and the data pin.

An agent optimising val_bpb finds every shortcut, so what measures a run must not be
something the run can change:

- the harness (prepare.py and ground.json) of every commit on an experiment branch must
  hash to the harness of the branch's base, the commit `gitar init` created the branch on
  (kept alive by the ref refs/gitar/base/<branch>); a commit that differs is rejected
  before it trains, whatever hooks it bypassed;
- the files the evaluation reads (the tokenizer and the pinned validation shard) are
  hashed when a branch is first measured and must hash the same before every run and
  again after train.py has exited, when gitar copies them for the evaluator: each is
  read once, hashed as it is copied, and the evaluator reads only the copy;
- the recorded val_bpb comes from gitar/loop/evaluator.py, a separate process in a
  sandbox of its own that runs only the pinned prepare.py on the model train.py exported
  (see measure()).

train.py itself runs in a sandbox (gitar/host/sandbox.py, gitar/host/confine.py) that cannot write
any of this, sees neither the validation shard nor gitar's state, and whose processes all
end with it; these checks are what holds when ground.json turns the sandbox off, and
what `gitar verify` re-checks afterwards.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gitar
from gitar import shared
from gitar.config.schema import GROUND_FILE, Ground, owned
from gitar.host import confine, runner
from gitar.loop.eval_data import (
    HASH_CHUNK,
    changed_files,
    data_digest,
    evaluation_files,
    hash_evaluation_data,
)
from gitar.numbers import number_or_none
from gitar.paths import Paths
from gitar.store.git import Git
from gitar.store.pins import ensure_base, load_data_pin, save_data_pin
from gitar.store.records import REJECTED

HARNESS_FILES = ("prepare.py", GROUND_FILE)
HARNESS, REPORTED = "harness", "reported"  # ground.json experiment.evaluate: where val_bpb comes from
# train.py's own val_bpb line and the harness's number of the same model agree to float noise
# (the same data and code, eager vs exported graph); more than this is worth a note in the record.
REPORTED_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------
# The harness, checked against the branch base (gitar/store/pins.py)
# ---------------------------------------------------------------------------


def harness_sha256(git: Git, sha: str) -> str:
    """One hash over the evaluation harness of a commit, so a record says what measured it."""
    h = hashlib.sha256()
    for name in HARNESS_FILES:
        h.update(name.encode() + b"\0")
        h.update(git.blob_at(sha, name) or b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def admit(git: Git, branch: str, sha: str, fallback: str, ground: Ground) -> tuple[str, str | None]:
    """The branch base, and why the commit may not be measured against it (else None).

    The checks in their fixed order, the first that refuses says why: the base (recorded now
    for a branch without one), the harness, the files only the user may change, the
    evaluation data (pinned on the first measured run, when gitar's harness evaluates).
    """
    base = ensure_base(git, branch, fallback)
    reason = harness_refusal(git, sha, base)
    if reason is None:
        reason = ownership_refusal(git, sha, base, ground.experiment.agent_owned)
    if reason is None and ground.experiment.evaluate == HARNESS:
        reason = data_refusal(git, branch, ground)
    return base, reason


def harness_refusal(git: Git, sha: str, base: str) -> str | None:
    """Why the commit may not be measured on a branch with this base (another harness), or None."""
    if harness_sha256(git, sha) != harness_sha256(git, base):
        changed = [name for name in HARNESS_FILES if git.blob_at(sha, name) != git.blob_at(base, name)]
        return (f"harness differs from the branch base {base[:7]}: {'/'.join(changed) or 'prepare.py/ground.json'} "
                "changed; experiments may change only the agent-owned files")
    return None


def ownership_refusal(git: Git, sha: str, base: str, agent_owned: tuple[str, ...]) -> str | None:
    """Why the commit may not be measured: it changes files only the user may change, or None.

    The pre-commit hook refuses such a commit where it is made; this catches the ones made
    without it (`--no-verify`, another clone, pushed for a runner), against the branch base.
    """
    changed = [p for p in git.out("diff", "--name-only", "--no-renames", base, sha).splitlines() if p]
    foreign = [p for p in changed if not owned(p, agent_owned)]
    if not foreign:
        return None
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    return (f"changes files that are not agent-owned since the branch base {base[:7]}: "
            f"{', '.join(foreign[:3])}{more}; experiments may change only {', '.join(agent_owned)}")


# ---------------------------------------------------------------------------
# The evaluation data, checked against its pin (gitar/store/pins.py)
# ---------------------------------------------------------------------------


def pin_data(git: Git, branch: str, ground: Ground) -> dict[str, str] | None:
    """The branch's data pin, made from the files as they are now if it has none yet."""
    pinned = load_data_pin(git, branch)
    if pinned is not None:
        return pinned
    files = hash_evaluation_data(ground)
    if files is not None:
        save_data_pin(git, branch, files)
        return load_data_pin(git, branch)  # the pin that won, should another process have made one
    return files


def data_refusal(git: Git, branch: str, ground: Ground) -> str | None:
    """Why the branch's evaluation data cannot be trusted now, or None (the data may be unprepared:
    training then fails on its own, with prepare.py's message)."""
    pinned = pin_data(git, branch, ground)
    if pinned is None:
        return None
    changed = changed_files(pinned, hash_evaluation_data(ground))
    if changed:
        return (f"evaluation data differs from what {branch} was first measured on: {', '.join(changed)} "
                f"changed in {ground.cache_dir}; restore it (`python prepare.py`) or start a new branch "
                "with `gitar init TAG`")
    return None


# ---------------------------------------------------------------------------
# The measurement: the harness evaluation of what train.py exported
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """The number a run is judged on and where it came from."""

    status: str  # ok | crash | timeout | rejected: the run as the judge sees it
    val_bpb: float | None
    source: str | None  # harness | reported
    reported: float | None  # train.py's own val_bpb line
    reason: str = ""  # why a run that trained is rejected
    error: dict[str, Any] | None = None  # a failure after training (export missing, evaluator crashed)
    evaluation: dict[str, Any] | None = None  # what the evaluator reports besides val_bpb
    data_sha256: str | None = None
    evaluator_s: float | None = None  # the evaluator process's wall time, by gitar's clock

    @property
    def mismatch(self) -> str | None:
        """A note when train.py printed another number than the harness measured."""
        if self.source != HARNESS or self.val_bpb is None or self.reported is None or math.isnan(self.reported):
            return None  # nan: train.py's evaluate_bpb was the launcher's export, which measures nothing
        if not math.isfinite(self.reported) or abs(self.reported - self.val_bpb) > REPORTED_TOLERANCE * max(
                1.0, abs(self.val_bpb)):
            return (f"train.py printed val_bpb {self.reported:.6f} but the harness measured {self.val_bpb:.6f}; "
                    "the harness's number is recorded")
        return None


def reported_only(result: runner.RunResult) -> Measurement:
    """experiment.evaluate "reported": the number train.py printed (an escape hatch; verify flags it)."""
    value = number_or_none(result.summary.get("val_bpb"))
    ok = result.status == "ok"
    return Measurement(result.status, value if ok else None, REPORTED if ok else None, value)


@dataclass(frozen=True)
class EvaluationRun:
    """Where one run's trainer writes and its harness evaluation reads and writes.

    out/ is the only directory the trainer may write besides its snapshot: the export and
    its crash record. eval/ is written by gitar after every process of the trainer is gone:
    the base's prepare.py and ground.json from git, and private copies of the export and
    of the evaluation files, each read once and hashed as it was copied. result/ is the
    evaluator's only writable directory. The trainer never sees eval/ or result/.
    """

    root: Path
    log_path: Path

    @classmethod
    def of(cls, paths: Paths, log_path: Path, run_key: str) -> EvaluationRun:
        return cls(root=paths.runs / run_key, log_path=log_path)

    @property
    def outbox(self) -> Path:
        return self.root / "out"

    @property
    def export_path(self) -> Path:
        return self.outbox / shared.EXPORT_FILE

    @property
    def trainer_crash_path(self) -> Path:
        return self.outbox / shared.CRASH_RECORD

    @property
    def inputs(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.root / "result"

    @property
    def crash_path(self) -> Path:
        return self.results / shared.CRASH_RECORD

    def prepare(self) -> None:
        """Before training: an empty out/ (no export from an earlier run can pass for this one's)."""
        _remove(self.root)
        self.outbox.mkdir(parents=True)

    def cleanup(self) -> None:
        _remove(self.root)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def copy_once(source: Path, dest: Path) -> str | None:
    """Copy a regular file, hashing the bytes as they pass: the copy is exactly what was hashed.

    None if the source is missing or not a regular file (a symlink the trainer left is not
    followed). Returns the sha256.
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
                out.write(chunk)
    return h.hexdigest()


def measure(git: Git, base: str, ground: Ground, trained: runner.RunResult, run: EvaluationRun,
            pinned: Mapping[str, str] | None, timeout_s: float, *, run_id: str,
            on_start: Callable[[runner.Started], None] | None = None,
            device_env: Mapping[str, str] | None = None) -> Measurement:
    """The harness's val_bpb of the model train.py exported, from a sandbox of its own.

    Runs only after a successful training run, whose every process is gone. The evaluator
    reads the base commit's prepare.py and ground.json, written fresh from git, and copies
    of the export and the evaluation files that gitar made and hashed just now, under what
    is left of the run's hard timeout. Raises runner.RunInterrupted like training does.
    """
    reported = number_or_none(trained.summary.get("val_bpb"))
    if reported is not None and math.isnan(reported):
        reported = None  # `val_bpb: nan`: the launcher's export stood in for train.py's evaluation
    if pinned is None:
        return Measurement(REJECTED, None, None, reported,
                           reason="the evaluation data was not prepared when the run started, so the harness "
                                  "cannot vouch for it; run `python prepare.py` and measure again")
    digest = data_digest(pinned)
    _remove(run.inputs)
    _remove(run.results)
    run.results.mkdir(parents=True)
    program = run.inputs / shared.EXPORT_FILE
    program_sha = copy_once(run.export_path, program)
    if program_sha is None:
        return Measurement("crash", None, None, reported, data_sha256=digest, error={
            "type": "NoExport", "message": f"train.py did not export its model for the harness evaluation "
                                           f"(${shared.EXPORT_PATH}; see program.md)"})
    copies = {name: run.inputs / "cache" / name for name in evaluation_files(ground)}
    actual: dict[str, str] = {}
    for name, path in evaluation_files(ground).items():
        sha = copy_once(path, copies[name])
        if sha is not None:
            actual[name] = sha
    changed = changed_files(pinned, actual)
    if changed:
        return Measurement(REJECTED, None, None, reported, data_sha256=digest,
                           reason=f"evaluation data changed during the run: {', '.join(changed)} in "
                                  f"{ground.cache_dir} differ from the branch's pin; restore it (`python prepare.py`)")
    _write_harness(git, base, run.inputs)
    out = run.results / "result.json"
    # No --expect: the evaluator's copies are the bytes just hashed, and nothing else can write them.
    command = [sys.executable, "-m", "gitar.loop.evaluator", "--workspace", str(run.inputs),
               "--program", str(program), "--out", str(out)]
    env = shared.confined_env({shared.WORKSPACE: str(git.root), "PYTHONPATH": _gitar_path(), **(device_env or {})})  # the GPU the model trained on
    confined = confine.for_evaluation(git, ground, run.inputs, run.results, copies, run_id)
    result = runner.run_confined(command, cwd=run.results, env=env, log_path=run.log_path,
                                 crash_path=run.crash_path, timeout_s=max(timeout_s, 0.0), on_start=on_start,
                                 confined=confined, needs_val_bpb=False)
    measured = _interpret(result, out, reported, digest)
    details = dict(measured.evaluation or {})
    details["program_sha256"] = program_sha
    return replace(measured, evaluation=details, evaluator_s=result.wall_s)


def _interpret(result: runner.RunResult, out: Path, reported: float | None, digest: str) -> Measurement:
    if result.status == "timeout":
        return Measurement("timeout", None, None, reported, data_sha256=digest, error={
            "type": "Timeout", "message": "the harness evaluation ran past experiment.timeout_s, which covers "
                                          "training and evaluation; process group killed"})
    data = runner.read_json_file(out) if result.returncode == 0 else None
    if data is None:
        crash = dict(result.crash or {})
        message = str(crash.get("message") or "exited without a result")
        crash["message"] = f"the harness evaluation failed: {message}"
        crash.setdefault("type", "EvaluationFailed")
        if not crash.get("traceback"):
            crash["traceback"] = result.log_tail.splitlines()[-15:]
        return Measurement("crash", None, None, reported, data_sha256=digest, error=crash)
    details = {k: v for k, v in data.items() if k not in ("val_bpb", "rejected")}
    rejected = data.get("rejected")
    if isinstance(rejected, str):
        return Measurement(REJECTED, None, None, reported, reason=rejected, evaluation=details,
                           data_sha256=digest)
    value = number_or_none(data.get("val_bpb"))
    if value is None or not math.isfinite(value):
        return Measurement("crash", None, None, reported, data_sha256=digest, error={
            "type": "EvaluationFailed", "message": f"the harness evaluation gave no finite val_bpb: {data!r:.200}"})
    return Measurement("ok", value, HARNESS, reported, evaluation=details, data_sha256=digest)


def _write_harness(git: Git, base: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in HARNESS_FILES:
        blob = git.blob_at(base, name)
        if blob is not None:
            (directory / name).write_bytes(blob)


def _gitar_path() -> str:
    # The evaluator imports the gitar that runs this, never a copy in the snapshot or the work tree.
    here = str(Path(gitar.__file__).resolve().parent.parent)  # the directory holding the gitar package
    rest = os.environ.get("PYTHONPATH")
    return os.pathsep.join([here, rest]) if rest else here


