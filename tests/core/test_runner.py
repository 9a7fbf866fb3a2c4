"""gitar.host.runner with real processes: exit paths, timeouts, orphans, signals, log parsing."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from gitar.errors import GitarError
from gitar.host.runner import (
    Progress,
    RunResult,
    Started,
    expand_command,
    parse_summary,
    read_progress,
    run_confined,
)
from testing.trainers import summary_lines

REPO = Path(__file__).resolve().parents[2]

# A GPU run's summary block, laid out as the fake trainers lay theirs out.
SUMMARY = "\n".join(summary_lines({
    "val_bpb": "0.997900", "training_seconds": "300.1", "total_seconds": "325.9", "peak_vram_mb": "45060.2",
    "mfu_percent": "39.80", "total_tokens_M": "499.6", "num_steps": 953, "num_params_M": "50.3", "depth": 8,
    "device": "cuda", "dtype": "bfloat16", "attention": "fa3", "seed": 42})) + "\n"

STEP = "step {:05d} | loss {:.6f} | lrm 1.000 | dt 120ms | tok/s 12345 | mfu 12.3% | epoch 1 | train {:.1f}/20s"


# ---------------------------------------------------------------------------
# helpers: processes are checked from /proc, independently of the code under test
# ---------------------------------------------------------------------------


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()[0]


def pid_gone(pid: int) -> bool:
    """Exited (an unreaped zombie holds no memory and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _state(pid) in (None, "Z")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    # Some kernels still count zombies that nobody reaps (PID 1 in a container may not).
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text()
            except OSError:
                continue
            rest = fields[fields.rfind(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                return False
    return True


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_script(tmp_path: Path, source: str, *, interpreter: str = sys.executable, suffix: str = ".py",
               timeout_s: float = 30.0, grace_s: float = 1.0,
               on_start: Callable[[Started], None] | None = None) -> RunResult:
    script = tmp_path / f"train{suffix}"
    script.write_text(textwrap.dedent(source))
    return run_confined([interpreter, str(script)], cwd=tmp_path, env=child_env(),
                        log_path=tmp_path / "logs" / "run.log", crash_path=tmp_path / "state" / "crash.json",
                        timeout_s=timeout_s, grace_s=grace_s, on_start=on_start)


# ---------------------------------------------------------------------------
# run_confined: how a run ends
# ---------------------------------------------------------------------------


def test_ok_run_parses_summary_and_reports_the_group(tmp_path: Path) -> None:
    started: list[Started] = []
    result = run_script(tmp_path, f"""
        import os, sys
        print("stdin:", repr(sys.stdin.read()))
        print("crash file:", os.environ["GITAR_CRASH_FILE"])
        print("unbuffered:", os.environ["PYTHONUNBUFFERED"])
        print("group leader:", os.getpgrp() == os.getpid())
        print({STEP.format(7, 3.25, 1.5)!r})
        print("a warning", file=sys.stderr)
        print({SUMMARY!r})
    """, on_start=started.append)
    assert result.status == "ok", result
    assert result.returncode == 0 and result.signal is None and result.crash is None
    assert [s.pgid for s in started] == [result.pgid]
    assert result.summary["val_bpb"] == pytest.approx(0.9979)
    assert result.summary["num_steps"] == 953 and isinstance(result.summary["num_steps"], int)
    assert result.summary["device"] == "cuda"
    log = result.log_path.read_text()
    assert "stdin: ''" in log
    assert f"crash file: {tmp_path / 'state' / 'crash.json'}" in log
    assert "unbuffered: 1" in log and "group leader: True" in log and "a warning" in log
    assert log.startswith("[gitar] ") and log.rstrip().splitlines()[-1].startswith("[gitar] ok")
    assert "seed:             42" in result.log_tail
    assert result.started_at <= result.ended_at and result.wall_s >= 0
    assert read_progress(result.log_path) == Progress(step=7, loss=3.25, train_s=1.5, budget_s=20.0)
    assert group_gone(result.pgid)


def test_log_is_appended_and_each_run_reads_only_its_own_output(tmp_path: Path) -> None:
    first = run_script(tmp_path, f"print({SUMMARY!r})")
    assert first.status == "ok"
    second = run_script(tmp_path, "print('no summary this time')")
    assert second.status == "crash" and second.summary == {}
    assert second.log_path.read_text().count("val_bpb:") == 1


def test_crash_file_written_by_the_trainer_is_the_crash_record(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import json, os, sys
        record = {"type": "OutOfMemoryError", "message": "CUDA out of memory", "step": 12}
        with open(os.environ["GITAR_CRASH_FILE"], "w") as f:
            json.dump(record, f)
        sys.exit(1)
    """)
    assert result.status == "crash" and result.returncode == 1
    assert result.crash == {"type": "OutOfMemoryError", "message": "CUDA out of memory", "step": 12}


def test_exception_without_crash_file_gives_a_derived_record(tmp_path: Path) -> None:
    stale = tmp_path / "state" / "crash.json"
    stale.parent.mkdir()
    stale.write_text('{"type": "FromAnEarlierRun"}')
    result = run_script(tmp_path, """
        print("---")  # local: a block that is no summary, then a crash
        print("this is not a summary")
        def deep():
            raise ValueError("boom")
        deep()
    """)
    assert result.status == "crash" and result.returncode == 1
    assert result.crash is not None
    assert result.crash["type"] == "ExitCode"
    assert "exited with code 1" in result.crash["message"] and "ValueError: boom" in result.crash["message"]
    assert result.crash["traceback"].startswith("Traceback (most recent call last)")
    assert "deep()" in result.crash["traceback"]
    assert result.summary == {}


def test_unparsable_crash_file_falls_back_to_the_derived_record(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import os, sys
        open(os.environ["GITAR_CRASH_FILE"], "w").write('{"type": "Trunc')
        sys.exit(3)
    """)
    assert result.crash is not None and result.crash["type"] == "ExitCode"
    assert result.crash["message"] == "exited with code 3"


def test_nonzero_exit_after_a_summary_is_a_crash(tmp_path: Path) -> None:
    result = run_script(tmp_path, f"import sys; print({SUMMARY!r}); sys.exit(2)")
    assert result.status == "crash" and result.returncode == 2
    assert result.summary["val_bpb"] == pytest.approx(0.9979)
    assert result.crash is not None and result.crash["type"] == "ExitCode"


def test_killed_by_a_signal(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import os, signal; print('dying'); os.kill(os.getpid(), signal.SIGKILL)")
    assert result.status == "crash"
    assert result.returncode == -signal.SIGKILL and result.signal == "SIGKILL"
    assert result.crash is not None and result.crash["type"] == "Signal"
    assert "SIGKILL" in result.crash["message"] and "dying" in result.crash["traceback"]


# Local summaries: deliberately malformed ones (nan, no val_bpb), which the fake trainers never print.
@pytest.mark.parametrize(("output", "detail"), [
    ("print('trained, but forgot the summary')", "no summary block"),
    ("print('---'); print('val_bpb: nan'); print('num_steps: 3')", "nan"),
    ("print('---'); print('num_steps: 3')", "None"),
])
def test_exit_zero_without_a_finite_val_bpb_is_no_summary(tmp_path: Path, output: str, detail: str) -> None:
    result = run_script(tmp_path, output)
    assert result.status == "crash" and result.returncode == 0
    assert result.crash is not None and result.crash["type"] == "NoSummary"
    assert detail in result.crash["message"]


# ---------------------------------------------------------------------------
# run_confined: the process group never outlives the run
# ---------------------------------------------------------------------------

STUBBORN = """\
trap '' TERM
sleep 1000 &
echo $! > grandchild.pid
echo started
wait
"""


def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    result = run_script(tmp_path, STUBBORN, interpreter="bash", suffix=".sh", timeout_s=1.0, grace_s=0.3)
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert result.status == "timeout"
    assert result.signal == "SIGKILL"  # SIGTERM was ignored, so the grace ran out
    assert result.crash is not None and result.crash["type"] == "Timeout"
    assert result.survivors == ()
    assert group_gone(result.pgid)
    assert pid_gone(grandchild)


def test_timeout_gives_the_trainer_its_grace_to_exit_cleanly(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import signal, sys, time
        def stop(signum, frame):
            print("saved and stopping", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("training", flush=True)
        time.sleep(1000)
    """, timeout_s=1.0, grace_s=10.0)
    assert result.status == "timeout"  # exit 0, but only because it was told to stop
    assert result.returncode == 0 and result.signal is None
    assert "saved and stopping" in result.log_path.read_text()


def test_children_left_behind_by_the_trainer_are_killed(tmp_path: Path) -> None:
    # A shell trainer, local: it ignores SIGTERM and leaves a child behind, which no fake trainer does.
    result = run_script(tmp_path, """\
        trap '' TERM
        sleep 1000 &
        echo $! > child.pid
        echo ---
        echo "val_bpb: 1.25"
        exit 0
    """, interpreter="bash", suffix=".sh", grace_s=0.3)
    child = int((tmp_path / "child.pid").read_text())
    assert result.status == "ok" and result.summary == {"val_bpb": 1.25}
    assert pid_gone(child)
    assert group_gone(result.pgid)


def test_failing_on_start_still_kills_the_group(tmp_path: Path) -> None:
    seen: list[int] = []

    def on_start(proc: Started) -> None:
        seen.append(proc.pgid)
        raise OSError("cannot record the running state")

    with pytest.raises(OSError, match="running state"):
        run_script(tmp_path, "import time; time.sleep(1000)", on_start=on_start, grace_s=0.3)
    assert group_gone(seen[0])


HELPER = """\
import json, os, signal, sys
from pathlib import Path
from gitar.host.runner import RunInterrupted, run_confined

work, grace_s = Path(sys.argv[1]), float(sys.argv[2])
before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
try:
    run_confined(["bash", str(work / "slow.sh")], cwd=work, env=dict(os.environ),
                 log_path=work / "run.log", crash_path=work / "crash.json", timeout_s=120, grace_s=grace_s,
                 on_start=lambda proc: (work / "pgid").write_text(str(proc.pgid)))
except RunInterrupted as e:
    after = {s: signal.getsignal(s) for s in before}
    (work / "result.json").write_text(json.dumps({
        "status": e.result.status, "signum": e.signum, "crash": e.result.crash,
        "pgid": e.result.pgid, "restored": after == before, "base": not isinstance(e, Exception)}))
    sys.exit(130)
sys.exit(0)
"""


def start_helper(tmp_path: Path, slow_sh: str, grace_s: float = 0.3) -> subprocess.Popen[bytes]:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "slow.sh").write_text(slow_sh)
    helper = subprocess.Popen([sys.executable, str(tmp_path / "helper.py"), str(tmp_path), str(grace_s)],
                              env=child_env())
    wait_for(lambda: (tmp_path / "grandchild.pid").exists() and (tmp_path / "pgid").exists()
             and (tmp_path / "grandchild.pid").read_text().strip() != "")
    return helper


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_the_runner_kills_the_group_and_raises(tmp_path: Path, sig: signal.Signals) -> None:
    helper = start_helper(tmp_path, STUBBORN)
    pgid = int((tmp_path / "pgid").read_text())
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert not group_gone(pgid)
    helper.send_signal(sig)
    assert helper.wait(timeout=30) == 130
    out: dict[str, Any] = json.loads((tmp_path / "result.json").read_text())
    assert out["status"] == "aborted" and out["signum"] == sig and out["pgid"] == pgid
    assert out["crash"]["type"] == "Aborted" and sig.name in out["crash"]["message"]
    assert out["restored"] and out["base"]
    assert group_gone(pgid) and pid_gone(grandchild)


def test_a_second_signal_cuts_the_grace_short(tmp_path: Path) -> None:
    helper = start_helper(tmp_path, STUBBORN, grace_s=600)
    pgid = int((tmp_path / "pgid").read_text())
    helper.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert helper.poll() is None and not group_gone(pgid)  # the group ignores SIGTERM: in its grace
    helper.send_signal(signal.SIGINT)  # impatient: kill it now
    assert helper.wait(timeout=60) == 130
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "aborted"
    assert group_gone(pgid)


def test_trainer_dies_with_a_killed_runner(tmp_path: Path) -> None:
    # SIGKILL cannot be caught: the kernel's parent-death signal is what stops the trainer.
    helper = start_helper(tmp_path, "sleep 1000 &\necho $! > grandchild.pid\nwait\n")
    pgid = int((tmp_path / "pgid").read_text())
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    helper.kill()
    helper.wait(timeout=30)
    try:
        wait_for(lambda: pid_gone(pgid), timeout_s=10)  # the leader: the runner's direct child
    finally:
        with suppress(ProcessLookupError):  # the orphan is recovery's job (it kills the recorded pgid)
            os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: pid_gone(grandchild))


def test_runs_outside_the_main_thread(tmp_path: Path) -> None:
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(run_script(tmp_path, f"print({SUMMARY!r})")))
    thread.start()
    thread.join(timeout=60)
    assert results and results[0].status == "ok"


# ---------------------------------------------------------------------------
# run_confined: refusals that leave nothing running
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under_a_file", "full_volume"])
def test_unwritable_log_is_one_line_and_runs_nothing(tmp_path: Path, where: str) -> None:
    if where == "full_volume" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / "a_file").write_text("")
    log_path = tmp_path / "a_file" / "run.log" if where == "under_a_file" else Path("/dev/full")
    marker = tmp_path / "ran"
    with pytest.raises(GitarError) as err:
        run_confined([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], cwd=tmp_path, env=child_env(),
                     log_path=log_path, crash_path=tmp_path / "crash.json", timeout_s=10)
    message = str(err.value)
    assert "training log" in message and "\n" not in message
    if where == "full_volume":
        assert "No space left" in message
    time.sleep(0.2)
    assert not marker.exists()


def test_command_that_cannot_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(GitarError, match=r"experiment\.command: cannot start 'no-such-trainer'"):
        run_confined(["no-such-trainer"], cwd=tmp_path, env=child_env(), log_path=tmp_path / "run.log",
                     crash_path=tmp_path / "crash.json", timeout_s=10)


def test_expand_command() -> None:
    assert expand_command(["{python}", "train.py"], python="/opt/py") == ["/opt/py", "train.py"]
    assert expand_command(("{python}", "-u", "x.py")) == [sys.executable, "-u", "x.py"]


# ---------------------------------------------------------------------------
# parse_summary
# ---------------------------------------------------------------------------


def test_parse_summary_types() -> None:
    s = parse_summary(SUMMARY)
    assert s["val_bpb"] == pytest.approx(0.9979) and isinstance(s["val_bpb"], float)
    assert s["peak_vram_mb"] == pytest.approx(45060.2)
    assert s["num_steps"] == 953 and s["depth"] == 8 and s["seed"] == 42
    assert all(isinstance(s[k], int) for k in ("num_steps", "depth", "seed"))
    assert s["device"] == "cuda" and s["attention"] == "fa3"
    assert len(s) == 13


def test_parse_summary_takes_the_last_block_and_skips_traceback_dashes() -> None:
    text = (
        "junk before: with a colon\n---\nval_bpb: 2.0\n"
        "step 00001 | loss 9.0\n"
        "---\r\nval_bpb:   1.5   \r\nnum_steps: 10\r\n\r\nnot part: of it\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1\n---\n"
        "ValueError: looks like a key\n"
        "---\n  File \"y.py\", line 2, in f\n"
        "---\n"
    )
    assert parse_summary(text) == {"val_bpb": 1.5, "num_steps": 10}


def test_parse_summary_edge_cases() -> None:
    assert parse_summary("") == {}
    assert parse_summary("no block at all\nval_bpb: 1.0\n") == {}
    assert parse_summary("---\n") == {}
    assert parse_summary("---\nnum_params_M: 50.3\n") == {"num_params_M": 50.3}  # keys may be missing
    s = parse_summary("---\nval_bpb: nan\nnum_steps: 12.5\nnote: 3 GB\nempty:\n")
    assert isinstance(s["val_bpb"], float) and math.isnan(s["val_bpb"])
    assert s["num_steps"] == "12.5" and s["note"] == "3 GB" and s["empty"] == ""
    # progress lines overwritten with \r before the summary
    assert parse_summary("step 1\rstep 2\r\n---\nval_bpb: 0.9\n") == {"val_bpb": 0.9}


# ---------------------------------------------------------------------------
# read_progress
# ---------------------------------------------------------------------------


def test_read_progress_on_a_big_log_with_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        for i in range(120_000):  # ~11 MB
            f.write(STEP.format(i, 3.0 + 1.0 / (i + 1), i / 10000) + "\n")
        f.write("step 120000 | loss 2.9999 | lrm 1.000 | dt 120ms | tok/s 123")  # being written
    assert log.stat().st_size > 10_000_000
    assert read_progress(log) == Progress(step=119_999, loss=pytest.approx(3.0 + 1 / 120_000),
                                          train_s=12.0, budget_s=20.0)
    with open(log, "a") as f:
        f.write("45 | mfu 12.3% | epoch 1 | train 12.0/2")  # cut inside the budget
    assert read_progress(log) is not None and read_progress(log).step == 119_999  # type: ignore[union-attr]
    with open(log, "a") as f:
        f.write("0s\n")
    assert read_progress(log) == Progress(step=120_000, loss=2.9999, train_s=12.0, budget_s=20.0)


def test_read_progress_looks_past_a_long_traceback(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(STEP.format(5, 4.5, 2.5) + "\n" + "  File \"noise.py\", line 1\n" * 20_000)
    assert read_progress(log) == Progress(step=5, loss=4.5, train_s=2.5, budget_s=20.0)


def test_read_progress_with_carriage_returns_and_nothing_yet(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    assert read_progress(log) is None
    log.write_text("compiling...\n")
    assert read_progress(log) is None
    log.write_text("\r" + STEP.format(1, 5.0, 0.5) + "\r" + STEP.format(2, 4.0, 1.0) + "    ")
    assert read_progress(log) == Progress(step=2, loss=4.0, train_s=1.0, budget_s=20.0)
