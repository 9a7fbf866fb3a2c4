"""The attack suite's workspace and its black-box probes.

An Arena is a private copy of a measured gitar workspace with its own interpreter and its own
copy of the gitar package: `python -m gitar` runs from a fresh `python -m venv` (torch and the
other dependencies come from the shared venv as a plain path entry) with PYTHONPATH naming only
the arena's gitar copy. The attacks write the site-packages of the interpreter they run under
(sysconfig's purelib) and the gitar they import, so they can only ever hit the arena's copies,
never the shared venv, /work/main or this checkout.

Everything here looks from the outside: the CLI's exit code and JSON, git's refs and notes,
files on disk, /proc. Nothing imports gitar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.hermetic import env_without_gitar

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINERS = REPO_ROOT / "tests" / "attacks" / "trainers"  # one attack a file, beside the tests that run them
BRANCH = "autoresearch/t1"
NOTES_REF = "refs/notes/gitar"
ATTACK_LINE = "# ATTACK\n"
HONEST_STEPS = "STEPS = 8 "  # trainers/honest.py's amount of training
# A cheat's number must not be kept below the honest one. Every honest run of the tiny trainer gives
# the same table and so the same number; this only absorbs float noise a different thread count
# could add. The cheats move val_bpb by 0.3 or more.
TOLERANCE = 1e-4
SETTLE_S = 5.0  # how long a run's processes get to disappear once gitar has returned (a sandbox's teardown)
_RUN_S = 300.0  # the CLI's own limit per command: a hang fails the test instead of the session


def shared_site_packages() -> Path:
    """The site-packages of the interpreter running the tests (torch, pygit2, typer, pre-commit)."""
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def make_private_python(root: Path) -> Path:
    """A venv of our own: its site-packages is what a `.pth` attack writes. The shared venv's
    packages are visible through a plain path line, so its own .pth files (the editable install
    of /work/main) are not processed and `import gitar` finds only PYTHONPATH's copy."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   capture_output=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(purelib, "zz_shared_venv.pth").write_text(f"{shared_site_packages()}\n")
    return python


def copy_gitar(pkg_root: Path) -> Path:
    """A private copy of the gitar package under pkg_root (the directory PYTHONPATH names)."""
    pkg_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "gitar", pkg_root / "gitar", ignore=shutil.ignore_patterns("__pycache__"))
    return pkg_root / "gitar"


def private_env(python: Path, pkg_root: Path) -> dict[str, str]:
    env = env_without_gitar()
    env["PYTHONPATH"] = str(pkg_root)  # replaces the test run's own PYTHONPATH: no route to this checkout
    env["PYTHONNOUSERSITE"] = "1"
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def check_isolated(python: Path, env: dict[str, str], pkg_root: Path) -> None:
    """The arena's interpreter imports the arena's gitar and has its own site-packages: an attack
    run through it cannot reach the shared venv or the real gitar source."""
    out = subprocess.run([str(python), "-c", "import gitar, sysconfig; print(gitar.__file__); "
                          "print(sysconfig.get_paths()['purelib'])"],
                         env=env, cwd=python.parent, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split("\n")
    assert Path(out[0]).resolve().is_relative_to(pkg_root.resolve()), out
    assert Path(out[1]).resolve().is_relative_to(python.parent.parent.resolve()), out


# ---------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------


def trainer(attack: str | None = None, /, *, steps: int | None = None, **values: object) -> str:
    """The honest trainer, with trainers/<attack>.py inserted at its ATTACK line and each
    @@KEY@@ placeholder replaced by repr(values[key]) (a Python literal in the trainer).

    steps: batches counted instead of the honest STEPS. Fewer make a model certainly worse than
    the baseline, for attacks that need their own attempt discarded (honest re-runs of the same
    model score the same to ~1e-7, and the strict rule keeps such a tie about half the time).
    """
    text = (TRAINERS / "honest.py").read_text()
    assert text.count(ATTACK_LINE) == 1
    if steps is not None:
        assert text.count(HONEST_STEPS) == 1
        text = text.replace(HONEST_STEPS, f"STEPS = {steps} ")
    if attack is not None:
        block = (TRAINERS / f"{attack}.py").read_text()
        text = text.replace(ATTACK_LINE, f"# --- attack: {attack} ---\n{block}\n")
    for key, value in values.items():
        placeholder = f'"@@{key}@@"'
        assert placeholder in text, f"{attack}: no {placeholder} to fill"
        text = text.replace(placeholder, repr(str(value) if isinstance(value, Path) else value))
    assert '"@@' not in text, f"{attack}: a placeholder is left unfilled"
    return text


# ---------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one `gitar try --json` ended with: its exit code and its record, if it printed one."""

    code: int
    record: dict[str, Any] | None
    stdout: str
    stderr: str

    @property
    def status(self) -> str:
        if self.record is None:
            return f"no record (exit {self.code})"
        return str(self.record.get("status"))

    @property
    def val_bpb(self) -> float | None:
        value = self.record.get("val_bpb") if self.record else None
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def log(self) -> Path | None:
        path = self.record.get("log") if self.record else None
        return Path(path) if isinstance(path, str) else None

    def log_text(self) -> str:
        log = self.log
        if log is None or not log.is_file():
            return ""
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (4 << 20)))  # the end is enough, and a flooded log is huge
            return f.read().decode("utf-8", errors="replace")

    def describe(self) -> str:
        rec = self.record or {}
        keys = ("status", "val_bpb", "reported_val_bpb", "reason", "error", "training_seconds", "wall_seconds")
        shown = {k: rec[k] for k in keys if k in rec}
        return f"exit {self.code}: {json.dumps(shown)[:1500]}" + ("" if rec else f" stderr: {self.stderr[-800:]}")


def is_win(outcome: Outcome, honest: float) -> bool:
    """A kept number better than the honest number of the same model: the cheat paid off."""
    value = outcome.val_bpb
    return outcome.status == "keep" and value is not None and value < honest - TOLERANCE


def assert_not_a_win(outcome: Outcome, honest: float) -> None:
    assert not is_win(outcome, honest), f"kept {outcome.val_bpb} vs honest {honest:.6f}; {outcome.describe()}"


def assert_stopped_with_cause(outcome: Outcome) -> None:
    """A clean end that is not a keep and says why: crash, timeout or rejected, with its reason."""
    assert outcome.record is not None, outcome.describe()
    assert outcome.status in ("crash", "timeout", "rejected"), outcome.describe()
    rec = outcome.record
    cause = rec.get("reason") or (rec.get("error") or {}).get("message") or (rec.get("error") or {}).get("type")
    assert cause, outcome.describe()


# ---------------------------------------------------------------------------
# Looking from the outside
# ---------------------------------------------------------------------------


def tree_digest(root: Path, *, names_only: bool = False, skip: Iterable[str] = ("__pycache__",)) -> str:
    """One hash over every file under root (path, and content unless names_only)."""
    h = hashlib.sha256()
    skipped = set(skip)
    if not root.exists():
        return "<missing>"
    for path in sorted(p for p in root.rglob("*") if not skipped & set(p.relative_to(root).parts)):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        if path.is_symlink():
            h.update(b"->" + os.readlink(path).encode())
        elif path.is_file() and not names_only:
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<missing>"


def _proc_text(pid: str, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def marked_processes(marker: str) -> list[int]:
    """Live processes whose command line or environment carries the marker (zombies excluded)."""
    needle = marker.encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        stat = _proc_text(entry.name, "stat")
        if not stat or stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
            continue
        if needle in _proc_text(entry.name, "cmdline") or needle in _proc_text(entry.name, "environ"):
            found.append(int(entry.name))
    return found


def survivors(marker: str, settle_s: float = SETTLE_S) -> list[int]:
    """The run's marked processes still alive once gitar returned, after a short grace for teardown."""
    deadline = time.monotonic() + settle_s
    while True:
        alive = marked_processes(marker)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def kill_marked(marker: str) -> None:
    """Clean up after an attack that worked: SIGKILL each process this test's attack started."""
    for _ in range(3):
        alive = marked_processes(marker)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def wait_for(condition: Any, limit_s: float, poll_s: float = 0.1) -> bool:
    """Poll condition() until it is true or limit_s passed; the result says which (never asserted on time)."""
    deadline = time.monotonic() + limit_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


# ---------------------------------------------------------------------------
# The arena
# ---------------------------------------------------------------------------


@dataclass
class Arena:
    root: Path  # the workspace (a git repository on BRANCH)
    python: Path  # the arena's own interpreter
    pkg_root: Path  # PYTHONPATH: holds the arena's gitar copy
    honest: float  # val_bpb of the honest trainer, as gitar measured it in the session fixture
    baseline: str  # the commit that measurement belongs to (the branch's best)
    limits: dict[str, int] | None  # ground.json experiment.limits, if this gitar accepts them
    marker: str = field(default_factory=lambda: f"gitar-attack-{uuid.uuid4().hex}")
    attempts: int = 0

    @property
    def env(self) -> dict[str, str]:
        return private_env(self.python, self.pkg_root)

    @property
    def gitdir(self) -> Path:
        return self.root / ".git"

    @property
    def gitar_source(self) -> Path:
        return self.pkg_root / "gitar"

    @property
    def site_packages(self) -> Path:
        [path] = self.python.parent.parent.glob("lib/python*/site-packages")
        return path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def gitar(self, *args: str, timeout: float = _RUN_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), "-m", "gitar", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def git(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
        return proc.stdout.strip()

    def ref(self, name: str) -> str | None:
        out = self.git("rev-parse", "--verify", "-q", name, check=False)
        return out or None

    def is_ancestor(self, older: str, newer: str) -> bool:
        return subprocess.run(["git", "merge-base", "--is-ancestor", older, newer], cwd=self.root,
                              capture_output=True, timeout=60).returncode == 0

    def tip(self) -> str | None:
        return self.ref(f"refs/heads/{BRANCH}")

    def records(self, rev: str) -> list[dict[str, Any]]:
        out = self.git("notes", "--ref", NOTES_REF, "show", rev, check=False)
        return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]

    def attempt(self, train_py: str, description: str | None = None) -> Outcome:
        """Write train.py, `gitar try --json` it, and return what gitar decided."""
        self.attempts += 1
        (self.root / "train.py").write_text(train_py)
        proc = self.gitar("try", description or f"attack attempt {self.attempts}", "--json")
        record = None
        for line in reversed(proc.stdout.splitlines()):
            if line.strip().startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                break
        return Outcome(proc.returncode, record, proc.stdout, proc.stderr)

    def best(self) -> tuple[str | None, float | None]:
        """(commit, val_bpb) of the branch's best as `gitar best --json` reports it; Nones if it reports none."""
        proc = self.gitar("best", "--json")
        try:
            best = json.loads(proc.stdout).get("best")
        except (ValueError, AttributeError):
            return None, None
        if not isinstance(best, dict):
            return None, None
        value = best.get("val_bpb")
        return best.get("commit"), float(value) if isinstance(value, (int, float)) else None

    def report(self) -> Path:
        """Where an attack's helper writes what it managed to do: outside the workspace and every run."""
        return self.root.parent / f"{self.marker}.report"

    def reported(self) -> str:
        path = self.report()
        return path.read_text() if path.is_file() else ""
