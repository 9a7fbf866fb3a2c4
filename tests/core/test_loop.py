"""The experiment loop end to end: real git, the real pre-commit hooks, a fake fast trainer."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from testing.trainers import fake_train
from testing.workspace import Workspace, trainer_processes


def _result(proc: object) -> str:
    return f"stdout={getattr(proc, 'stdout', '')!r} stderr={getattr(proc, 'stderr', '')!r}"


def test_baseline_keep_discard(workspace: Workspace) -> None:
    ws = workspace
    base = ws.head()
    proc = ws.gitar("run")
    assert proc.returncode == 0, _result(proc)
    assert proc.stdout.startswith("keep ") and "(baseline)" in proc.stdout
    [rec] = ws.records(base)
    assert rec["status"] == "keep" and rec["kind"] == "baseline" and rec["val_bpb"] == 1.0

    ws.write_train(0.9)
    proc = ws.gitar("try", "lower is better")
    assert proc.returncode == 0, _result(proc)
    kept = ws.tip()
    assert kept != base and ws.records(kept)[0]["status"] == "keep"
    assert ws.records(kept)[0]["best_before"] == 1.0
    assert abs(ws.records(kept)[0]["delta"] + 0.1) < 1e-9

    ws.write_train(0.95)
    proc = ws.gitar("try", "worse than the best")
    assert proc.returncode == 1, _result(proc)
    assert proc.stdout.startswith("discard ")
    assert ws.tip() == kept  # back at the best
    assert (ws.root / "train.py").read_text() == fake_train(0.9)  # the work tree followed
    assert ws.git("status", "--porcelain").stdout == ""
    discarded = [r for r in ws.all_records() if r["status"] == "discard"]
    assert len(discarded) == 1 and discarded[0]["best_commit"] == kept


def test_record_fields(workspace: Workspace) -> None:
    ws = workspace
    ws.write_train(0.8)
    proc = ws.gitar("try", "fields", "--json", "--hypothesis", "lower loss from a better init")
    assert proc.returncode == 0, _result(proc)
    rec = json.loads(proc.stdout)
    for key in ("schema", "status", "val_bpb", "peak_vram_mb", "training_seconds", "total_seconds",
                "mfu_percent", "num_params_M", "description", "branch", "parent", "started", "ended",
                "host", "platform", "harness_sha256", "log", "run_id", "seed"):
        assert key in rec, key
    assert rec["platform"] == {"device": "cpu", "dtype": "float32", "attention": "sdpa"}
    assert rec["bytes_rule"] == "utf8-decoded"  # the token-bytes rule val_bpb was computed with
    assert rec["hypothesis"] == "lower loss from a better init"
    # the gitar that ran and evaluated it: its release and a hash of its whole source
    import gitar
    from gitar import version

    assert rec["gitar"] == {"version": gitar.__version__, "sha256": version.code_sha256()}
    assert len(rec["gitar"]["sha256"]) == 64
    assert Path(rec["log"]).is_file() and "val_bpb" in Path(rec["log"]).read_text()
    assert ".git" in Path(rec["log"]).parts  # outside the tracked tree
    # notes are readable from git itself, one JSON object per line
    shown = ws.git("log", "-1", "--notes=gitar", rec["commit"]).stdout
    assert '"status": "keep"' in shown and "Notes (gitar)" in shown


def test_the_record_says_where_the_time_went(workspace: Workspace) -> None:
    """Record.timings by gitar's clock: the smoke step, the set-up and the trainer, inside the try's wall time."""
    ws = workspace
    ws.write_train(0.8, mode="sleep", sleep_s=0.3)
    t0 = time.time()
    proc = ws.gitar("try", "timed", "--json")
    wall = time.time() - t0
    assert proc.returncode == 0, _result(proc)
    rec = json.loads(proc.stdout)
    timings = rec["timings"]
    # The fake trainer reports its own number: no harness evaluation, so no handoff or evaluator.
    assert set(timings) == {"smoke_s", "setup_s", "trainer_s"}, timings
    assert timings["trainer_s"] == rec["wall_seconds"] >= 0.3  # it sleeps 0.3 s
    assert all(v >= 0 for v in timings.values()) and sum(timings.values()) < wall
    assert ws.records(rec["commit"])[0]["timings"] == timings  # in the note too


def test_first_successful_run_is_the_baseline(workspace: Workspace) -> None:
    ws = workspace
    ws.write_train(5.0)
    proc = ws.gitar("try", "no baseline measured yet")
    assert proc.returncode == 0, _result(proc)
    [rec] = ws.records(ws.tip())
    assert rec["status"] == "keep" and "baseline" in rec["reason"]


def test_crash_is_recorded_with_its_error(workspace: Workspace) -> None:
    ws = workspace
    base = ws.head()
    assert ws.gitar("run").returncode == 0
    ws.write_train(mode="crash")
    proc = ws.gitar("try", "this one crashes")
    assert proc.returncode == 1, _result(proc)
    assert proc.stdout.startswith("crash ") and "out of memory" in proc.stdout
    assert ws.tip() == base
    [rec] = [r for r in ws.all_records() if r["status"] == "crash"]
    assert rec["error"]["type"] == "RuntimeError"
    assert "out of memory" in rec["error"]["message"]
    assert rec.get("val_bpb") is None


def test_crash_without_crash_file_uses_the_log(workspace: Workspace) -> None:
    ws = workspace
    ws.write_train(mode="nosummary")
    proc = ws.gitar("try", "exits without a summary")
    assert proc.returncode == 1, _result(proc)
    [rec] = [r for r in ws.all_records() if r["status"] == "crash"]
    assert rec["error"]["type"] == "NoSummary"


def test_timeout_kills_the_process_group(hermetic: Path, tmp_path: Path, monkeypatch: object) -> None:
    from testing.workspace import make_workspace

    ws = make_workspace(tmp_path / "ws", timeout_s=3, budget_s=1)
    os.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    ws.write_train(mode="hang")
    proc = ws.gitar("try", "hangs forever")
    assert proc.returncode == 1, _result(proc)
    assert proc.stdout.startswith("timeout ")
    assert trainer_processes(ws.root) == [], "the trainer survived its timeout"
    [rec] = [r for r in ws.all_records() if r["status"] == "timeout"]
    assert rec["error"]["type"] == "Timeout"
    # How far it got, by its log (the fake prints steps 0-2, train 0.0-0.2s, then hangs).
    assert rec["last_step"] == 2 and rec["last_train_s"] == 0.2, rec
    assert "reached step 2 (train 0.2s, by train.py's log)" in proc.stdout, proc.stdout
    assert "reached step 2" in ws.gitar("show", str(rec["commit"])).stdout


def test_every_attempt_survives_gc(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    for i, (val, mode) in enumerate([(0.9, "ok"), (0.95, "ok"), (1.0, "crash")]):
        ws.write_train(val, mode)
        ws.gitar("try", f"attempt {i}")
    attempts = ws.git("for-each-ref", "--format=%(objectname)", "refs/gitar/attempts/").stdout.split()
    assert len(attempts) == 4  # the baseline and three tries
    ws.git("reflog", "expire", "--expire=now", "--all")
    ws.git("gc", "--prune=now", "-q")
    for sha in attempts:
        assert ws.git("cat-file", "-t", sha).stdout.strip() == "commit"
        assert ws.records(sha), f"the note on {sha} was lost"
    statuses = sorted(str(r["status"]) for r in ws.all_records())
    assert statuses == ["crash", "discard", "keep", "keep"]


def test_plain_git_commit_is_the_same_loop(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    ws.write_train(0.7)
    ws.git("add", "train.py")
    proc = ws.git("commit", "-m", "plain commit by an agent")
    assert "keep" in proc.stdout + proc.stderr
    [rec] = ws.records(ws.tip())
    assert rec["status"] == "keep" and rec["description"] == "plain commit by an agent"
    ws.write_train(0.75)
    ws.git("commit", "-am", "plain and worse")
    assert ws.records(ws.tip())[0]["val_bpb"] == 0.7  # reset to the best


def test_untracked_and_ignored_files_are_never_deleted(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    (ws.root / "notes.txt").write_text("my scratch notes\n")
    (ws.root / "data").mkdir()
    (ws.root / "data" / "big.bin").write_bytes(b"\0" * 100)
    ws.write_train(2.0)
    assert ws.gitar("try", "worse").returncode == 1
    assert (ws.root / "notes.txt").read_text() == "my scratch notes\n"
    assert (ws.root / "data" / "big.bin").exists()


def test_edits_made_during_a_run_are_kept(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    ws.write_train(2.0, mode="sleep", sleep_s=3)
    proc = ws.gitar("try", "slow and worse", "--detach")
    assert proc.returncode == 0, _result(proc)
    assert proc.stdout.startswith("started ")
    edited = fake_train(0.5) + "# the agent's next idea, typed while the run was going\n"
    (ws.root / "train.py").write_text(edited)
    proc = ws.gitar("wait")
    assert proc.returncode == 1, _result(proc)
    assert proc.stdout.startswith("discard ") and "edits made during the run were kept" in proc.stdout
    assert (ws.root / "train.py").read_text() == edited
    assert ws.records(ws.tip())[0]["kind"] == "baseline"


def test_detach_status_wait(workspace: Workspace) -> None:
    ws = workspace
    ws.write_train(0.9, mode="sleep", sleep_s=8)  # still running through status and run on a busy machine
    proc = ws.gitar("try", "detached run", "--detach", "--json")
    assert proc.returncode == 0, _result(proc)
    started = json.loads(proc.stdout)
    assert started["status"] == "started"
    status = json.loads(ws.gitar("status", "--json").stdout)
    assert status["running"] is not None and status["running"]["commit"] == started["commit"]
    busy = ws.gitar("run")
    assert busy.returncode == 2 and "another experiment is running" in busy.stderr
    proc = ws.gitar("wait", "--json")
    assert proc.returncode == 0, _result(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "keep" and rec["commit"] == started["commit"]
    status = json.loads(ws.gitar("status", "--json").stdout)
    assert status["running"] is None and status["best"]["commit"] == started["commit"]


def test_killed_gitar_is_recorded_as_aborted_by_the_next_command(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    best = ws.tip()
    ws.write_train(0.5, mode="hang")
    proc = ws.gitar("try", "killed mid-run", "--detach", "--json")
    assert proc.returncode == 0, _result(proc)
    running = json.loads((ws.root / ".git" / "gitar" / "running.json").read_text())
    deadline = time.time() + 20
    while "hanging" not in Path(running["log"]).read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert trainer_processes(ws.root), "the trainer did not start"
    os.kill(running["pid"], signal.SIGKILL)  # the runner dies without a word
    time.sleep(0.3)
    status = ws.gitar("status")
    assert "recovered an interrupted run" in status.stderr
    [rec] = [r for r in ws.all_records() if r["status"] == "aborted"]
    assert rec["commit"] == running["commit"] and rec["run_id"] == running["run_id"]
    assert ws.tip() == best
    deadline = time.time() + 10
    while trainer_processes(ws.root) and time.time() < deadline:
        time.sleep(0.1)
    assert trainer_processes(ws.root) == [], "the trainer outlived its runner"
    assert not (ws.root / ".git" / "gitar" / "lock").exists()
    assert ws.gitar("run").returncode == 0  # a re-measurement of the best, recorded as such
    assert ws.records(best)[-1]["kind"] == "rerun"
    # recorded exactly once, even when another command looks again
    ws.gitar("status")
    assert len([r for r in ws.all_records() if r["status"] == "aborted"]) == 1


def test_index_lock_during_reset_leaves_branch_on_attempt_then_recovers(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    best = ws.tip()
    ws.write_train(2.0, mode="sleep", sleep_s=2)
    proc = ws.gitar("try", "worse, while git is busy", "--detach", "--json")
    assert proc.returncode == 0, _result(proc)
    attempt = json.loads(proc.stdout)["commit"]
    index_lock = ws.root / ".git" / "index.lock"
    index_lock.write_text("")  # another git process holds the index
    try:
        done = ws.gitar("wait")
    finally:
        index_lock.unlink()
    assert done.returncode == 1 and "pending" in done.stdout and "index" in done.stdout
    assert ws.tip() == attempt  # never anywhere but the attempt or the best
    assert [r["status"] for r in ws.records(attempt)] == ["discard"]
    status = ws.gitar("status")
    assert "back from" in status.stderr
    assert ws.tip() == best
    assert ws.git("status", "--porcelain").stdout == ""


def test_status_shows_the_phase_and_the_time_left(hermetic: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from testing.workspace import make_workspace

    ws = make_workspace(tmp_path / "ws", timeout_s=60, budget_s=1)
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    # The fake trainer moves through its stages when the test says so: it waits for a file in its
    # snapshot (its working directory, which the sandbox lets it see and the test write) before each.
    ws.write_train(0.9, mode="staged", summary={"num_steps": 4})
    proc = ws.gitar("try", "staged", "--detach", "--json")
    assert proc.returncode == 0, _result(proc)
    started = json.loads(proc.stdout)
    snapshot = ws.root / ".git" / "gitar" / "snapshots" / started["run_id"]

    def running_when(stage: str, detail: str = "") -> dict[str, object]:
        """The running experiment from `gitar status --json` (another process) once it is at `stage`."""
        deadline = time.time() + 30
        while True:
            run = json.loads(ws.gitar("status", "--json").stdout)["running"]
            if run is not None and run.get("stage") == stage and detail in ws.gitar("status").stdout:
                return dict(run)
            assert time.time() < deadline, f"never reached {stage} {detail}: {run}"
            time.sleep(0.1)

    finished = False
    try:
        seen = running_when("start-up/compile", "no step yet")  # the trainer runs, has printed nothing
        assert seen["phase"] == "training", seen
        # The trainer's hard timeout: min(experiment.timeout_s 60, budget 1 + allowance 120).
        assert seen["phase_timeout_s"] == pytest.approx(60, abs=1), seen
        assert 0 < float(str(seen["time_left_s"])) <= 60, seen
        (snapshot / "go-warmup").write_text("")
        running_when("start-up/compile", "warm-up step 1")  # untimed steps (train 0.0s): still compiling
        (snapshot / "go-train").write_text("")
        seen = running_when("training")
        assert seen["phase"] == "training" and seen["step"] == 2, seen
        line = ws.gitar("status").stdout
        assert "| training | train 0.5/1s | step 2 |" in line and "s left of 60s" in line, line
        (snapshot / "go-done").write_text("")
        seen = running_when("evaluation by train.py")  # its budget spent; train.py measures itself ("reported")
        assert seen["phase"] == "training" and float(str(seen["time_left_s"])) < 60, seen
        (snapshot / "go-end").write_text("")
        done = ws.gitar("wait")
        assert done.returncode == 0 and done.stdout.startswith("keep "), _result(done)
        finished = True
    finally:
        if not finished:  # let the trainer end, so the run is recorded and nothing outlives the test
            for name in ("go-warmup", "go-train", "go-done", "go-end"):
                if snapshot.is_dir():
                    (snapshot / name).write_text("")
            ws.gitar("wait")
    assert json.loads(ws.gitar("status", "--json").stdout)["running"] is None


def test_phases_come_from_gitar_and_the_stage_from_the_log(tmp_path: Path) -> None:
    """gitar's phases after the trainer (export, evaluation, judging) with their deadlines."""
    from gitar.commands.status import phase_of, progress_line
    from gitar.host import state
    from gitar.host.runner import Progress

    now = time.time()
    running = state.Running(run_id="r", commit="a" * 40, branch="b", description="d", kind="attempt",
                            best_commit=None, move_branch=True, started=now - 100, budget_s=20, timeout_s=900,
                            log=str(tmp_path / "none.log"), pid=os.getpid(), phase=state.STARTING,
                            phase_started=now, evaluate="harness")
    assert phase_of(running, None, now).stage == "start-up"
    assert phase_of(running, None, now).time_left_s is None  # no timed process yet
    done = Progress(step=900, loss=3.0, train_s=20.0, budget_s=20.0)
    training = running.with_(phase=state.TRAINING, deadline=now + 40, phase_started=now - 100)
    assert phase_of(training, done, now).stage == "export"  # train.py's export, after its budget
    assert phase_of(training, done, now).time_left_s == pytest.approx(40)
    evaluating = running.with_(phase=state.EVALUATION, phase_started=now - 5, deadline=now + 795)
    line = progress_line(evaluating, done, now)
    assert "| evaluation | gitar's harness | after step 900 | 795s left of 800s" in line, line
    assert "judging" in progress_line(running.with_(phase=state.JUDGING), done, now)
    forged = running.with_(phase="x" * 10_000, deadline="soon")  # running.json could be anyone's
    assert phase_of(forged, None, now).time_left_s is None


def test_live_progress_reads_the_log(tmp_path: Path) -> None:
    from gitar.commands.status import progress_line
    from gitar.host import state
    from gitar.host.runner import read_progress

    log = tmp_path / "run.log"
    log.write_text("starting\nstep 00007 | loss 3.250000 | lrm 1.000 | dt 10ms | tok/s 1 | mfu 1.0% "
                   "| epoch 1 | train 4.5/20s\n")
    running = state.Running(run_id="r", commit="a" * 40, branch="b", description="d", kind="attempt",
                            best_commit=None, move_branch=True, started=time.time() - 6, budget_s=20,
                            timeout_s=60, log=str(log), pid=os.getpid())
    line = progress_line(running, read_progress(log))
    assert "train 4.5/20s" in line and "step 7" in line and "loss 3.2500" in line
    assert "start-up/compile" in progress_line(running, None)


def _wait_for_trainer(ws: Workspace) -> None:
    deadline = time.time() + 30
    while not trainer_processes(ws.root):
        assert time.time() < deadline, "the trainer did not start"
        time.sleep(0.1)


def test_while_an_attempt_runs_the_best_is_the_one_it_is_judged_against(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    best = ws.tip()
    ws.write_train(0.9, mode="sleep", sleep_s=30)
    proc = ws.gitar("try", "slow candidate", "--detach", "--json")
    assert proc.returncode == 0, _result(proc)
    attempt = json.loads(proc.stdout)["commit"]
    try:
        _wait_for_trainer(ws)
        assert ws.tip() == attempt  # the branch is on the attempt while it runs
        status = json.loads(ws.gitar("status", "--json").stdout)
        assert status["running"]["commit"] == attempt
        assert status["best"] is not None and status["best"]["commit"] == best, status
        assert f"best {best[:7]} val_bpb 1.000000" in ws.gitar("status").stdout
        shown = json.loads(ws.gitar("best", "--json").stdout)
        assert shown["best"] is not None and shown["best"]["commit"] == best, shown
        assert ws.gitar("best").stdout.startswith(f"best {best[:7]} val_bpb 1.000000")
        memory = ws.gitar("memory").stdout
        assert f"best {best[:7]} val_bpb 1.000000" in memory, memory
    finally:
        running = json.loads((ws.root / ".git" / "gitar" / "running.json").read_text())
        os.kill(running["pid"], signal.SIGTERM)  # recorded as aborted, back to the best
        deadline = time.time() + 30
        while (ws.root / ".git" / "gitar" / "running.json").exists() and time.time() < deadline:
            time.sleep(0.1)
    assert ws.tip() == best


def test_remeasurements_of_the_best_say_so_and_end_with_its_mean(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    proc = ws.gitar("run", "--repeat", "2")
    assert proc.returncode == 0, _result(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("remeasured ") for line in lines[:2]), lines
    assert "vs best" not in proc.stdout
    assert lines[2].startswith(f"best {ws.tip()[:7]} val_bpb 1.000000 (mean of 3 runs"), lines
    assert "σ" in lines[2]
    for r in (json.loads(line) for line in ws.gitar("run", "--json").stdout.splitlines()):
        assert r["kind"] == "rerun" and r["status"] == "keep"  # the record's verdict is unchanged


def test_a_dead_run_is_recovered_though_another_process_reuses_its_pid(workspace: Workspace) -> None:
    """After a restart the pid in running.json may belong to anything: the run it names is still dead."""
    import dataclasses
    import subprocess

    from gitar.host import state
    from gitar.host.processes import process_stat

    ws = workspace
    assert ws.gitar("run").returncode == 0
    tip = ws.tip()
    impostor = subprocess.Popen(["sleep", "60"])  # holds the pid now; not the gitar that ran the experiment
    try:
        stat = process_stat(impostor.pid)
        assert stat is not None
        running = state.Running(run_id="dead", commit=tip, branch="autoresearch/t1", description="before the restart",
                                kind="rerun", best_commit=None, move_branch=False, started=time.time() - 60,
                                budget_s=1, timeout_s=30, log=str(ws.root / "none.log"), pid=impostor.pid)
        saved = {**dataclasses.asdict(running), "pid_start": stat.start_time - 1}  # the dead gitar's, before the restart
        (ws.root / ".git" / "gitar" / "running.json").write_text(json.dumps(saved))
        status = json.loads(ws.gitar("status", "--json").stdout)
        assert status["running"] is None, status
        aborted = [r for r in ws.records(tip) if r.get("run_id") == "dead"]
        assert [r["status"] for r in aborted] == ["aborted"], ws.records(tip)
        assert impostor.poll() is None, "recovery never kills a process that is not the run's"
    finally:
        impostor.kill()
        impostor.wait()
