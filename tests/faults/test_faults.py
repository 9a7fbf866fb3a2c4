"""Fault injection: whatever goes wrong during an experiment, five invariants hold afterwards.

Each case builds a workspace with a measured baseline, starts an attempt, makes it
suffer one fault (a signal to gitar or to the trainer, a crash, a NaN, a timeout, an
out-of-memory error, a full log volume, git's index.lock held elsewhere, a corrupt line
in the notes), lets the next gitar command recover where the fault was gitar's own
death, and then checks, from git and the process table alone (never through gitar's
own judge):

1. the branch tip is the best kept commit according to the records;
2. every attempted commit is pinned and has exactly one record line per run (by
   run_id), with the status the fault calls for (aborted when gitar itself was stopped);
3. no agent edit and no user file is lost: an untracked file, an ignored file, a
   user-owned tracked file and an edit to train.py made during the run are unchanged
   byte for byte, and the attempted train.py is reachable at its attempt ref;
4. no process of the experiment survives: the trainer, its child and the gitar
   process that ran them are gone (or zombies nobody here is parent of), and the
   trainer's process group has no live member;
5. the lock is free: no .git/gitar/lock, no running state, and a following
   `gitar try` runs, is kept and is recorded.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.faults import FaultWorkspace, Pids, copy_fault_workspace, make_fault_workspace
from testing.hermetic import REPO_ROOT
from testing.trainers import fake_train

BRANCH = "autoresearch/t1"
EDIT = b"\n# the next idea, typed into train.py while the run goes on\n"
GITAR = [sys.executable, "-m", "gitar"]
RUN_STATUSES = {"keep", "discard", "crash", "timeout", "aborted", "rejected", "undecided"}

Record = dict[str, Any]


@dataclass
class Outcome:
    """What a fault did, as the test saw it, and what the records must say about it."""

    rc: int
    out: str
    err: str
    attempt: str | None  # the attempted commit (None: refused before anything was committed)
    status: str | None  # the one record the attempt must have after the next gitar command
    attempted: bytes | None = None  # train.py as committed for the attempt
    pids: Pids | None = None
    runner: int | None = None  # the gitar process that ran the trainer (running.json pid)
    gitar_stopped: bool = False  # gitar itself was interrupted: the next command must finish the job
    check: Callable[[Record], None] = lambda record: None  # fault-specific checks of that record
    next_command: tuple[str, ...] = ("status",)
    warnings: int = 0  # "gitar: warning:" lines expected from each command afterwards


# ---------------------------------------------------------------------------
# Reading git and the process table independently of gitar
# ---------------------------------------------------------------------------


def read_notes(fw: FaultWorkspace) -> tuple[dict[str, list[Record]], int]:
    """Every run record per commit, straight from `git notes`; and the count of lines that are none."""
    notes: dict[str, list[Record]] = {}
    bad = 0
    listing = fw.ws.git("notes", "--ref", "refs/notes/gitar", "list", check=False).stdout
    for line in listing.splitlines():
        blob, commit = line.split()
        for text in fw.ws.git("cat-file", "blob", blob).stdout.splitlines():
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict) and obj.get("status") == "lesson":
                continue  # `gitar learn`: not a run
            if not isinstance(obj, dict) or obj.get("status") not in RUN_STATUSES or obj.get("commit") != commit:
                bad += 1
                continue
            notes.setdefault(commit, []).append(obj)
    return notes, bad


def best_kept(fw: FaultWorkspace, notes: dict[str, list[Record]]) -> str:
    """The last kept commit of the branch: the kept commit every other kept commit leads to."""
    kept = {c for c, records in notes.items() if any(r["status"] == "keep" and r["branch"] == BRANCH for r in records)}
    assert kept, "no kept commit at all: the baseline's record is gone"
    last = [c for c in kept
            if all(o == c or fw.ws.git("merge-base", "--is-ancestor", o, c, check=False).returncode == 0
                   for o in kept)]
    assert len(last) == 1, f"the kept commits do not form one line of descent: {sorted(kept)}"
    return last[0]


def pinned(fw: FaultWorkspace) -> set[str]:
    out = fw.ws.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/gitar/attempts/").stdout
    pins = set()
    for line in out.splitlines():
        ref, target = line.split()
        assert ref.rsplit("/", 1)[-1] == target, f"{ref} pins another commit ({target})"
        pins.add(target)
    return pins


def proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2]


def live_group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def assert_process_gone(pid: int, what: str) -> None:
    state = proc_state(pid)
    if state in (None, "Z", "X"):
        # A zombie holds no memory and no GPU; it must only not be ours to reap.
        assert state is None or _parent(pid) != os.getpid(), f"{what} ({pid}) is a zombie of the test itself"
        return
    raise AssertionError(f"{what} (pid {pid}) survived the fault: state {state}")


def _parent(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2:].split()[1])


# ---------------------------------------------------------------------------
# The invariants
# ---------------------------------------------------------------------------


def protect(fw: FaultWorkspace) -> dict[Path, bytes]:
    """A user's files that no fault may touch: untracked, ignored, and user-owned tracked."""
    (fw.root / "scratch.txt").write_bytes(b"a user's notes, never committed\n")
    (fw.root / "data").mkdir(exist_ok=True)
    (fw.root / "data" / "shard_00000.bin").write_bytes(os.urandom(4096))  # data/ is in .gitignore
    return {p: p.read_bytes() for p in (fw.root / "scratch.txt", fw.root / "data" / "shard_00000.bin",
                                        fw.root / "program.md", fw.root / "prepare.py")}


def assert_invariants(fw: FaultWorkspace, outcome: Outcome, protected: dict[Path, bytes],
                      attempts: dict[str, list[str]]) -> None:
    """The five invariants; `attempts` maps every commit the test attempted to its records' statuses."""
    ws = fw.ws
    notes, _ = read_notes(fw)

    # 1. The branch tip is the best kept commit according to the records.
    assert ws.tip() == best_kept(fw, notes), "the branch is not at its best kept commit"
    assert ws.head() == ws.tip(), "HEAD left the experiment branch"

    # 2. Every attempt is pinned and recorded exactly once per run, with the status the fault calls for.
    pins = pinned(fw)
    assert pins == set(attempts), f"pinned {sorted(pins)} but attempted {sorted(attempts)}"
    assert set(notes) <= pins, "a record on a commit nobody attempted"
    for commit, statuses in attempts.items():
        records = [r for r in notes.get(commit, []) if r["branch"] == BRANCH]
        run_ids = [r["run_id"] for r in records]
        assert len(run_ids) == len(set(run_ids)), f"{commit[:7]}: a run recorded twice: {run_ids}"
        assert [r["status"] for r in records] == statuses, f"{commit[:7]}: records {records}"

    # 3. No agent edit and no user file is lost.
    for path, content in protected.items():
        assert path.read_bytes() == content, f"{path.name} changed or was lost"
    if outcome.attempt is not None and outcome.attempted is not None:
        shown = subprocess.run(["git", "show", f"refs/gitar/attempts/{outcome.attempt}:train.py"], cwd=fw.root,
                               capture_output=True, check=True).stdout
        assert shown == outcome.attempted, "the attempted train.py is not what its attempt ref holds"
    at_tip = subprocess.run(["git", "show", "HEAD:train.py"], cwd=fw.root, capture_output=True, check=True).stdout
    porcelain = set(ws.git("status", "--porcelain").stdout.splitlines())
    expected = {"?? scratch.txt"} | ({" M train.py"} if (fw.root / "train.py").read_bytes() != at_tip else set())
    assert porcelain == expected, f"git status: {sorted(porcelain)}, expected {sorted(expected)}"

    # 4. No process of the experiment survives.
    if outcome.pids is not None:
        assert_process_gone(outcome.pids.trainer, "the trainer")
        assert_process_gone(outcome.pids.child, "the trainer's child")
        assert live_group_members(outcome.pids.pgid) == [], "the trainer's process group still has members"
    if outcome.runner is not None:
        assert_process_gone(outcome.runner, "the gitar process that ran the trainer")

    # 5. The lock is free and nothing claims to be running.
    assert not (fw.gitar_dir / "lock").exists(), "the experiment lock is still held"
    assert not (fw.gitar_dir / "running.json").exists(), "a run is still said to be under way"


def warnings_in(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("gitar: warning:"))


# ---------------------------------------------------------------------------
# The faults
# ---------------------------------------------------------------------------


def _edit_during_run(fw: FaultWorkspace) -> None:
    with open(fw.root / "train.py", "ab") as f:
        f.write(EDIT)


def _run_with(fw: FaultWorkspace, mode: str, act: Callable[[FaultWorkspace, Pids, subprocess.Popen[str]], None], *,
              val_bpb: float = 0.5, preexec: Callable[[], None] | None = None, wait: bool = True) -> Outcome:
    """Attempt a trainer in `mode`; once it runs, edit train.py, then `act` (the fault, or the go-ahead)."""
    attempted = fw.write_train(mode, val_bpb, wait=wait)
    proc = fw.start_try(f"fault: {mode}", preexec=preexec)
    pids, running = fw.wait_running(proc)
    assert (running["pid"] == proc.pid) != fw.hooks, "the run did not take the path this case is about"
    _edit_during_run(fw)
    act(fw, pids, proc)
    out, err = proc.communicate(timeout=90)
    return Outcome(proc.returncode, out, err, str(running["commit"]), None, attempted, pids, int(running["pid"]))


def _go(fw: FaultWorkspace, pids: Pids, proc: subprocess.Popen[str]) -> None:
    fw.go()


def signal_gitar(sig: signal.Signals, *, group: bool = False) -> Callable[[FaultWorkspace], Outcome]:
    """SIGINT/SIGTERM/SIGKILL to `gitar try` while it trains; `group`: to its whole process group,
    as a terminal's Ctrl-C is (the trainer runs in a session of its own and is not in it)."""

    def fault(fw: FaultWorkspace) -> Outcome:
        def send(fw: FaultWorkspace, pids: Pids, proc: subprocess.Popen[str]) -> None:
            (os.killpg if group else os.kill)(proc.pid, sig)

        o = _run_with(fw, "sleep", send)
        o.status, o.gitar_stopped = "aborted", True
        assert o.rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), (o.rc, o.out, o.err)
        if sig != signal.SIGKILL:
            # Exit 130 promises the attempt is recorded as aborted already, not by some later command.
            assert o.attempt is not None and [r["status"] for r in fw.ws.records(o.attempt)] == ["aborted"]
            assert not (fw.gitar_dir / "running.json").exists()
        # The command an agent runs to learn how its attempt ended; it finishes a killed run's record.
        o.next_command = ("wait", "--json")
        return o

    return fault


def kill_trainer(fw: FaultWorkspace) -> Outcome:
    """SIGKILL to the training process (what the kernel's out-of-memory killer does); its child stays behind."""

    def kill(fw: FaultWorkspace, pids: Pids, proc: subprocess.Popen[str]) -> None:
        os.kill(pids.trainer, signal.SIGKILL)

    o = _run_with(fw, "sleep", kill)
    o.status = "crash"

    def check(r: Record) -> None:
        assert r["error"]["type"] == "Signal" and "SIGKILL" in r["error"]["message"]

    o.check = check
    return o


def trainer_fails(mode: str, status: str, error_type: str, message: str) -> Callable[[FaultWorkspace], Outcome]:
    def fault(fw: FaultWorkspace) -> Outcome:
        o = _run_with(fw, mode, _go)
        o.status = status

        def check(r: Record) -> None:
            assert r["error"]["type"] == error_type, r["error"]
            assert message in r["error"]["message"], r["error"]
            assert r.get("val_bpb") is None, "a failed run has no number to judge"
            assert error_type in o.out and message in o.out, "the result line names the cause"

        o.check = check
        return o

    return fault


def timeout(fw: FaultWorkspace) -> Outcome:
    o = _run_with(fw, "hang", lambda fw, pids, proc: None, wait=False)
    o.status = "timeout"

    def check(r: Record) -> None:
        assert r["error"]["type"] == "Timeout" and "timeout" in r["error"]["message"]

    o.check = check
    return o


def _fsize_limit(limit: int) -> Callable[[], None]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return cap


def log_volume_full(fw: FaultWorkspace) -> Outcome:
    """The log's volume fills up during the run.

    A test cannot count on being allowed to mount a small filesystem, so `gitar try` runs under
    RLIMIT_FSIZE (inherited by everything it starts): a write that would take a file past
    1 MiB fails with EFBIG, as a write to a full volume fails with ENOSPC. The files gitar
    writes for its bookkeeping (lock, state, objects, the record) stay far below that; the
    flooding log does not. gitar writes the log (the trainer writes into a pipe), so the run
    itself goes on: its result stands, judged from the end of the output gitar kept in memory,
    and the record says the log is incomplete.
    """
    o = _run_with(fw, "flood", _go, preexec=_fsize_limit(1024 * 1024))
    o.status = "keep"  # the fault suite's trainer reports 0.5, better than the baseline's 1.0

    def check(r: Record) -> None:
        assert r["val_bpb"] == 0.5, r
        assert "is incomplete: File too large" in r["reason"], r["reason"]

    o.check = check
    return o


def log_dir_unusable(fw: FaultWorkspace) -> Outcome:
    """The log cannot even be created: .git/gitar/logs is a file, so open() fails (ENOTDIR, even for root),
    as creating a file on a full volume fails (ENOSPC)."""
    logs = fw.gitar_dir / "logs"
    aside = logs.with_name("logs.aside")
    logs.rename(aside)
    logs.write_text("not a directory\n")
    attempted = fw.write_train("ok", 0.5)
    proc = subprocess.run([*GITAR, "try", "fault: no log"], cwd=fw.root, capture_output=True, text=True,
                          timeout=90)
    logs.unlink()
    aside.rename(logs)
    assert proc.returncode == 1 and proc.stdout.startswith("crash "), (proc.stdout, proc.stderr)
    [attempt] = pinned(fw) - {fw.baseline}

    def check(r: Record) -> None:
        assert r["error"]["type"] == "GitarError" and "cannot open the training log" in r["error"]["message"]

    return Outcome(proc.returncode, proc.stdout, proc.stderr, attempt, "crash", attempted, check=check)


def index_lock_during_run(fw: FaultWorkspace) -> Outcome:
    """Another git process holds .git/index.lock when the branch must move back (a discard)."""
    index_lock = fw.root / ".git" / "index.lock"

    def hold_then_go(fw: FaultWorkspace, pids: Pids, proc: subprocess.Popen[str]) -> None:
        fd = os.open(index_lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # as git takes it
        os.close(fd)
        fw.go()

    o = _run_with(fw, "ok", hold_then_go, val_bpb=2.0)
    assert o.rc == 1 and "pending" in o.out and "index" in o.out, (o.out, o.err)
    assert o.attempt is not None and fw.ws.tip() == o.attempt  # never anywhere but the attempt or the best
    # Still held: the next command cannot finish the move yet, and says so without breaking anything.
    again = fw.ws.gitar("status")
    assert again.returncode == 2 and "index is locked" in again.stderr, (again.stdout, again.stderr)
    assert len(again.stderr.splitlines()) == 1
    assert fw.ws.tip() == o.attempt
    index_lock.unlink()  # the other git process is done
    o.status = "discard"
    return o


def index_lock_before_try(fw: FaultWorkspace) -> Outcome:
    """.git/index.lock exists when `gitar try` starts: refused, exit 2, nothing changed."""
    index_lock = fw.root / ".git" / "index.lock"
    index_lock.write_bytes(b"")
    fw.write_train("ok", 0.5)
    proc = fw.ws.gitar("try", "fault: index locked")
    assert proc.returncode == 2 and "index.lock" in proc.stderr, (proc.stdout, proc.stderr)
    assert index_lock.exists(), "another process's lock file was removed"
    index_lock.unlink()
    return Outcome(proc.returncode, proc.stdout, proc.stderr, None, None)


def corrupt_note(line: Callable[[FaultWorkspace], str]) -> Callable[[FaultWorkspace], Outcome]:
    """A line in the best commit's note that is no record; the loop, the review commands and the judge go on."""

    def fault(fw: FaultWorkspace) -> Outcome:
        fw.ws.git("notes", "--ref", "refs/notes/gitar", "append", "-m", line(fw), fw.baseline)
        assert read_notes(fw)[1] == 1, "the corrupt line is not in the notes"
        o = _run_with(fw, "ok", _go, val_bpb=0.9)
        assert o.rc == 0 and o.out.startswith("keep "), (o.out, o.err)
        assert warnings_in(o.err) == 1, o.err
        for command in (("log",), ("memory",), ("best",)):
            proc = fw.ws.gitar(*command)
            assert proc.returncode == 0 and warnings_in(proc.stderr) == 1, (command, proc.stdout, proc.stderr)
        o.status, o.warnings = "keep", 1

        def check(r: Record) -> None:
            assert r["best_before"] == 1.0 and r["best_commit"] == fw.baseline, r  # judged on the valid record

        o.check = check
        return o

    return fault


def _garbage(fw: FaultWorkspace) -> str:
    return "<<<<<<< a merge conflict marker, not a record"


def _torn_record(fw: FaultWorkspace) -> str:
    # A record cut short, claiming a far better number: using it would make 0.9 a discard.
    return f'{{"status": "keep", "val_bpb": 0.1, "commit": "{fw.baseline}", "branch": "{BRANCH}", "run_id": "torn", "desc'


TEMPLATE_TIMEOUT_S = 30.0  # experiment.timeout_s of the shared template workspace


@dataclass(frozen=True)
class Fault:
    make: Callable[[FaultWorkspace], Outcome]
    hooks: bool = False  # commit through git's hooks (a foreign hook is installed) instead of in process
    timeout_s: float = TEMPLATE_TIMEOUT_S


FAULTS = {
    "sigint-to-gitar": Fault(signal_gitar(signal.SIGINT)),
    "ctrl-c-to-its-group": Fault(signal_gitar(signal.SIGINT, group=True)),
    "sigterm-to-gitar": Fault(signal_gitar(signal.SIGTERM)),
    "sigkill-to-gitar": Fault(signal_gitar(signal.SIGKILL)),
    "sigint-to-gitar-via-hooks": Fault(signal_gitar(signal.SIGINT), hooks=True),
    "ctrl-c-to-its-group-via-hooks": Fault(signal_gitar(signal.SIGINT, group=True), hooks=True),
    "sigterm-to-gitar-via-hooks": Fault(signal_gitar(signal.SIGTERM), hooks=True),
    "sigkill-to-gitar-via-hooks": Fault(signal_gitar(signal.SIGKILL), hooks=True),
    "sigkill-to-the-trainer": Fault(kill_trainer),
    "crash": Fault(trainer_fails("crash", "crash", "RuntimeError", "a bug in the new attention code")),
    "nan-loss": Fault(trainer_fails("nan", "crash", "TrainingDiverged", "training loss is nan at step 3")),
    "nan-val-bpb": Fault(trainer_fails("nan-summary", "crash", "NoSummary", "val_bpb is nan")),
    # Short enough to wait for, long enough that the baseline (the honest trainer) always finishes
    # inside it, even with other work on both cores: 2 s was not (a baseline timed out in CI).
    "timeout": Fault(timeout, timeout_s=6),
    "cuda-out-of-memory": Fault(trainer_fails("oom", "crash", "OutOfMemoryError", "CUDA out of memory")),
    "out-of-memory-rlimit": Fault(trainer_fails("oom-rlimit", "crash", "MemoryError", "")),
    "log-volume-full": Fault(log_volume_full),
    "log-dir-unusable": Fault(log_dir_unusable),
    "index-lock-during-run": Fault(index_lock_during_run),
    "index-lock-before-try": Fault(index_lock_before_try),
    "corrupt-note-line": Fault(corrupt_note(_garbage)),
    "torn-note-line": Fault(corrupt_note(_torn_record)),
}


STOP_AFTER_THE_RUN = """
import os, signal, sys
from pathlib import Path
from gitar.host import runner, signals
tmp = Path(sys.argv[1])
with signals.stop_signals_held():
    result = runner.run_confined([sys.executable, str(tmp / "train.py")], cwd=tmp,
                                 env=dict(os.environ), log_path=tmp / "run.log", crash_path=tmp / "crash.json",
                                 timeout_s=30)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C just after the run, while its record is being written
    print("recorded", result.status, flush=True)
print("never here", flush=True)
"""


def test_a_stop_after_the_run_waits_for_its_record(tmp_path: Path) -> None:
    # A stop that comes too late to abort the run must not cut its record off half way: held
    # until the holder (`gitar try`, the post-commit hook) has written it, then delivered.
    (tmp_path / "train.py").write_text(fake_train(1.0))
    proc = subprocess.run([sys.executable, "-c", STOP_AFTER_THE_RUN, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert proc.stdout == "recorded ok\n", (proc.stdout, proc.stderr)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr


def test_the_nan_fake_says_what_train_py_says() -> None:
    # The fake's NaN fast fail copies train.py's check_loss; if train.py changes its words, so must the fake.
    source = (REPO_ROOT / "train.py").read_text()
    assert 'raise TrainingDiverged(f"training loss is {loss} at step {step} (limit {MAX_LOSS:g}): the run diverged; "' \
        in source
    # The failure contract is the launcher's now (ground.json runs train.py under it).
    launcher = (REPO_ROOT / "gitar" / "runtime" / "launch.py").read_text()
    assert "code = fail(e, state.phase, state.step)" in launcher
    crash = (REPO_ROOT / "gitar" / "runtime" / "crash.py").read_text()  # fail: the record, then the traceback and 1
    assert "write_crash_record(exc, phase, step)" in crash and "return 1" in crash


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault(name: str, hermetic: Path, tmp_path: Path, fault_template: FaultWorkspace) -> None:
    spec = FAULTS[name]
    if spec.timeout_s == TEMPLATE_TIMEOUT_S:
        fw = copy_fault_workspace(fault_template, tmp_path / "ws", hooks=spec.hooks)
    else:  # ground.json is pinned at `gitar init`: another timeout needs a workspace of its own
        fw = make_fault_workspace(tmp_path / "ws", hooks=spec.hooks, timeout_s=spec.timeout_s)
    protected = protect(fw)

    outcome = spec.make(fw)

    if outcome.status is None:
        assert outcome.attempt is None
    else:
        assert outcome.attempt is not None, (outcome.rc, outcome.out, outcome.err)
    after = fw.ws.gitar(*outcome.next_command)
    waited = outcome.next_command[0] == "wait"
    # `gitar wait` exits as `gitar try` would have (1: not kept), `gitar status` succeeds.
    assert after.returncode == (1 if waited else 0) and "Traceback" not in after.stderr, (after.stdout, after.stderr)
    assert warnings_in(after.stderr) == outcome.warnings, after.stderr
    if waited:
        reported = json.loads(after.stdout)
        assert reported["commit"] == outcome.attempt and reported["status"] == outcome.status, reported
    status = after if outcome.next_command == ("status",) else fw.ws.gitar("status")
    assert status.returncode == 0 and "nothing running" in status.stdout, (status.stdout, status.stderr)

    attempts = {fw.baseline: ["keep"]}
    if outcome.attempt is not None:
        assert outcome.status is not None
        attempts[outcome.attempt] = [outcome.status]
    assert_invariants(fw, outcome, protected, attempts)
    if outcome.attempt is not None:
        [record] = [r for r in read_notes(fw)[0][outcome.attempt]]
        outcome.check(record)
        if outcome.gitar_stopped:
            assert record["status"] == "aborted"

    # The loop goes on: a good attempt runs, is kept and is recorded.
    fw.write_train("ok", 0.25)
    good = fw.ws.gitar("try", "after the fault")
    assert good.returncode == 0 and good.stdout.startswith("keep "), (good.stdout, good.stderr)
    assert warnings_in(good.stderr) <= outcome.warnings  # reads the corrupt note or not: never twice
    attempts[fw.ws.tip()] = ["keep"]
    assert_invariants(fw, Outcome(0, "", "", None, None), protected, attempts)
