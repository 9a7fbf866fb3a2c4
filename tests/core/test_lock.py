"""gitar.host.lock with real processes holding, losing and fighting over the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitar.errors import ExitCode, GitarError
from gitar.host import lock as lockmod
from gitar.host.lock import LockInfo, acquire, clear_stale, lock_path, new_token, read

REPO = Path(__file__).resolve().parents[2]

HOLDER = """\
import os, sys
from pathlib import Path
from gitar.host.lock import acquire
from gitar.errors import GitarError

gitdir, mode, token = Path(sys.argv[1]), sys.argv[2], sys.argv[3] or None
if mode == "contend":
    while not (gitdir / "go").exists():
        pass
try:
    lock = acquire(gitdir, purpose="gitar try", token=token, commit="abc123def4567890aa")
except GitarError as e:
    print("refused", e.code, flush=True)
    sys.exit(0)
print("held", flush=True)
if mode == "die":
    os._exit(0)  # never releases: the lock goes stale
sys.stdin.readline()
lock.release()
"""


def start_holder(gitdir: Path, mode: str = "hold", token: str = "") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(gitdir), mode, token], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def hold(gitdir: Path, token: str = "") -> subprocess.Popen[str]:
    holder = start_holder(gitdir, token=token)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def stop(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)


def proc_start(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rfind(")") + 2 :].split()[19])


def write_lock(gitdir: Path, **fields: object) -> Path:
    record: dict[str, object] = {"pid": os.getpid(), "pid_start": proc_start(os.getpid()),
                                 "host": socket.gethostname(), "token": new_token(), "purpose": "gitar try",
                                 "commit": None, "started": time.time()}
    record.update(fields)
    path = lock_path(gitdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture()
def gitdir(tmp_path: Path) -> Path:
    d = tmp_path / ".git"
    d.mkdir()
    return d


def test_acquire_writes_the_record_and_release_removes_it(gitdir: Path) -> None:
    with acquire(gitdir, purpose="gitar try", commit="c0ffee") as lock:
        assert lock.owned
        path = gitdir / "gitar" / "lock"
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["pid_start"] == proc_start(os.getpid())
        assert record["host"] == socket.gethostname() and record["token"] == lock.token
        assert record["purpose"] == "gitar try" and record["commit"] == "c0ffee"
        assert abs(record["started"] - time.time()) < 600
        info = read(gitdir)
        assert info == lock.info and info is not None and info.alive()
    assert not path.exists() and read(gitdir) is None
    lock.release()  # twice is harmless
    assert list((gitdir / "gitar").iterdir()) == []


def test_a_lock_held_by_another_process_is_refused_with_one_line(gitdir: Path) -> None:
    holder = hold(gitdir)
    try:
        with pytest.raises(GitarError) as err:
            acquire(gitdir, purpose="gitar try")
        assert err.value.code == ExitCode.REFUSED
        message = str(err.value)
        assert message.startswith(f"another experiment is running in this repository: abc123d (pid {holder.pid}, "
                                  "gitar try, since ")
        assert message.endswith("wait for it with `gitar wait` or see `gitar status`")
        assert "\n" not in message
    finally:
        stop(holder)
    assert read(gitdir) is None  # the holder released it
    acquire(gitdir, purpose="gitar try").release()


def test_lock_of_a_dead_process_is_stale_and_cleared(gitdir: Path) -> None:
    holder = start_holder(gitdir, mode="die")
    assert holder.communicate(timeout=30)[0] == "held\n"
    stale = read(gitdir)
    assert stale is not None and stale.pid == holder.pid and not stale.alive()
    with acquire(gitdir, purpose="gitar try") as lock:
        assert lock.owned and read(gitdir) == lock.info
    assert sorted(p.name for p in (gitdir / "gitar").iterdir()) == []  # nothing left aside


def test_lock_of_a_zombie_is_stale(gitdir: Path) -> None:
    holder = start_holder(gitdir, mode="die")
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    # Exited but not yet waited for: its pid still exists, as a zombie.
    deadline = time.monotonic() + 15
    while Path(f"/proc/{holder.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        info = read(gitdir)
        assert info is not None and not info.alive()
        acquire(gitdir, purpose="gitar try").release()
    finally:
        holder.wait()


def test_a_reused_pid_is_told_apart_by_its_start_time(gitdir: Path) -> None:
    # The pid is alive (it is ours) but belongs to another process than the one that locked.
    write_lock(gitdir, pid_start=proc_start(os.getpid()) - 1)
    info = read(gitdir)
    assert info is not None and not info.alive()
    with acquire(gitdir, purpose="gitar try") as lock:
        assert lock.owned
    # The same pid with the right start time is alive: refused, even within one process.
    write_lock(gitdir)
    with pytest.raises(GitarError, match="another experiment is running"):
        acquire(gitdir, purpose="gitar try")


def test_a_holder_on_another_host_is_assumed_alive(gitdir: Path) -> None:
    write_lock(gitdir, pid=999_999_999, host="gpu-box-7")
    with pytest.raises(GitarError, match=r"pid 999999999 on gpu-box-7"):
        acquire(gitdir, purpose="gitar try")


def test_join_by_token_across_processes(gitdir: Path) -> None:
    token = new_token()
    holder = hold(gitdir, token=token)
    try:
        joined = acquire(gitdir, purpose="post-commit", token=token)
        assert not joined.owned and joined.info.pid == holder.pid and joined.info.purpose == "gitar try"
        joined.release()
        assert read(gitdir) == joined.info  # a joiner never removes the holder's lock
        with pytest.raises(GitarError, match="another experiment"):
            acquire(gitdir, purpose="post-commit", token=new_token())
    finally:
        stop(holder)
    assert read(gitdir) is None


def test_release_never_deletes_another_lock(gitdir: Path) -> None:
    lock = acquire(gitdir, purpose="gitar try")
    other = new_token()
    path = lock_path(gitdir)
    path.unlink()  # say it was judged stale and someone else took it
    write_lock(gitdir, token=other)
    lock.release()
    assert path.exists() and json.loads(path.read_text())["token"] == other


def test_transfer_hands_the_lock_to_another_process(gitdir: Path) -> None:
    lock = acquire(gitdir, purpose="gitar try", commit="abc")
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.transfer(runner.pid)
        info = read(gitdir)
        assert info is not None and info.pid == runner.pid and info.pid_start == proc_start(runner.pid)
        assert info.token == lock.token and info.commit == "abc" and info.purpose == "gitar try"
        assert info.alive() and not lock.owned
        lock.release()  # no longer ours to remove
        assert read(gitdir) == info
        assert [p.name for p in (gitdir / "gitar").iterdir()] == ["lock"]  # no temp file left
        with pytest.raises(GitarError, match=f"pid {runner.pid}"):
            acquire(gitdir, purpose="gitar try")
        # the runner's side: join with the token, and the file names us as the holder
        joined = acquire(gitdir, purpose="runner", token=lock.token)
        assert not joined.owned
        joined.transfer(os.getpid())
        assert joined.owned and read(gitdir) == joined.info
        joined.transfer(runner.pid)
    finally:
        runner.kill()
        runner.wait()
    with acquire(gitdir, purpose="gitar try") as fresh:  # the runner died holding it: stale
        assert fresh.owned


def test_the_previous_holder_does_not_release_a_lock_transferred_away(gitdir: Path) -> None:
    # `gitar try` keeps its Lock object while the detached runner transfers the lock to itself.
    token = new_token()
    mine = acquire(gitdir, purpose="gitar try", token=token)
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        taken = acquire(gitdir, purpose="runner", token=token)  # another Lock object, same token
        taken.transfer(runner.pid)
        assert mine.owned  # it was not told
        mine.release()
        info = read(gitdir)
        assert info is not None and info.pid == runner.pid
    finally:
        runner.kill()
        runner.wait()


def test_clear_stale_removes_only_a_dead_holders_lock(gitdir: Path) -> None:
    assert not clear_stale(gitdir)
    with acquire(gitdir, purpose="gitar try"):
        assert not clear_stale(gitdir) and read(gitdir) is not None
    write_lock(gitdir, pid_start=proc_start(os.getpid()) + 5)
    assert clear_stale(gitdir) and read(gitdir) is None
    path = lock_path(gitdir)
    path.write_text("")
    assert not clear_stale(gitdir) and path.exists()  # may be being written
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert clear_stale(gitdir) and not path.exists()
    assert list((gitdir / "gitar").iterdir()) == []


def test_transfer_of_a_lock_that_is_no_longer_ours_fails(gitdir: Path) -> None:
    lock = acquire(gitdir, purpose="gitar try")
    lock_path(gitdir).unlink()
    write_lock(gitdir)
    with pytest.raises(GitarError, match="no longer ours"):
        lock.transfer(os.getpid())


@pytest.mark.parametrize("content", ["", '{"pid": 12', "[1, 2]", '{"pid": "x"}'])
def test_a_young_corrupt_lock_is_respected_and_an_old_one_cleared(gitdir: Path, content: str) -> None:
    path = lock_path(gitdir)
    path.parent.mkdir()
    path.write_text(content)
    assert read(gitdir) is None
    with pytest.raises(GitarError, match="unreadable") as err:
        acquire(gitdir, purpose="gitar try")
    assert err.value.code == ExitCode.REFUSED and path.read_text() == content
    old = time.time() - lockmod.CORRUPT_STALE_AFTER_S - 1
    os.utime(path, (old, old))
    with acquire(gitdir, purpose="gitar try") as lock:
        assert lock.owned


def test_a_lock_being_written_is_waited_for(gitdir: Path) -> None:
    path = lock_path(gitdir)
    path.parent.mkdir()
    path.write_text("")
    record = {"pid": os.getpid(), "pid_start": proc_start(os.getpid()), "host": socket.gethostname(),
              "token": new_token(), "purpose": "writer", "commit": None, "started": time.time()}
    writer = threading.Timer(0.1, lambda: path.write_text(json.dumps(record)))
    writer.start()
    try:
        with pytest.raises(GitarError, match=r"another experiment .*, writer, since"):
            acquire(gitdir, purpose="gitar try")
    finally:
        writer.join()


def test_unknown_keys_from_a_newer_gitar_are_ignored(gitdir: Path) -> None:
    write_lock(gitdir, gpu=3)
    info = read(gitdir)
    assert info is not None and info.alive() and info.pid == os.getpid()


def test_contenders_for_a_stale_lock_get_it_exactly_once(gitdir: Path) -> None:
    dead = start_holder(gitdir, mode="die")
    dead.communicate(timeout=30)
    contenders = [start_holder(gitdir, mode="contend") for _ in range(4)]
    time.sleep(0.3)  # let them start and spin on the go file
    (gitdir / "go").write_text("")
    try:
        outcomes = [c.stdout.readline().strip() for c in contenders if c.stdout is not None]
        assert sorted(outcomes) == ["held", "refused 2", "refused 2", "refused 2"]
    finally:
        for c in contenders:
            stop(c)
    assert read(gitdir) is None
    assert sorted(p.name for p in (gitdir / "gitar").iterdir()) == []


def test_lockinfo_round_trips_through_json() -> None:
    info = LockInfo(pid=1, pid_start=None, host="h", token="t", purpose="p", commit=None, started=1.5)
    assert LockInfo(**json.loads(info.to_json())) == info


def test_clearing_a_stale_lock_spares_one_that_replaced_it_meanwhile(gitdir: Path) -> None:
    # The race the contenders above rarely hit: another process cleared the stale lock and
    # took its own between our look at the stale file and our removal of it.
    # The new file may even get the old one's inode number back.
    path = write_lock(gitdir, pid=999_999_999)
    stale = lockmod._look(path)
    assert stale is not None
    path.unlink()
    fresh = write_lock(gitdir, token="fresh")
    lockmod._remove_if_same(path, stale)
    assert json.loads(fresh.read_text())["token"] == "fresh"
    current = lockmod._look(path)
    assert current is not None
    lockmod._remove_if_same(path, current)
    assert not path.exists() and list((gitdir / "gitar").iterdir()) == []


def test_transfer_can_name_the_commit_that_now_runs(gitdir: Path) -> None:
    # `gitar try` locks before its commit exists; once made, the lock names it and its description,
    # so a concurrent try is told what runs, not the commit it was built on.
    lock = acquire(gitdir, purpose="try", description="wider MLP")
    assert "another experiment is running in this repository: \"wider MLP\" (pid" in lockmod.held_message(lock.info)
    lock.transfer(os.getpid(), commit="f00dfeed" * 5, description="wider MLP")
    info = read(gitdir)
    assert info is not None and info.commit == "f00dfeed" * 5 and info.description == "wider MLP" and lock.owned
    assert lockmod.held_message(info).startswith('another experiment is running in this repository: f00dfee "wider MLP" (')
    lock.release()


def test_take_over_makes_a_joined_lock_this_processs_and_names_whom_it_was_joined_from(gitdir: Path) -> None:
    # The hook's run and the detached runner join the lock of the `gitar try` that made the commit.
    token = new_token()
    holder = hold(gitdir, token=token)
    try:
        joined = acquire(gitdir, purpose="experiment", token=token, commit="f00dfeed" * 5, description="wider MLP")
        assert not joined.owned
        starter = joined.take_over(commit="f00dfeed" * 5, description="wider MLP")
        assert starter is not None and starter.pid == holder.pid and starter.purpose == "gitar try"
        info = read(gitdir)
        assert info is not None and joined.owned and info == joined.info
        assert info.pid == os.getpid() and info.token == token and info.purpose == "gitar try"
        assert info.commit == "f00dfeed" * 5 and info.description == "wider MLP"
        joined.release()
        assert read(gitdir) is None  # this process holds it now: its release removes it
    finally:
        stop(holder)
    # A lock this process took itself names the commit already: nothing to take over.
    with acquire(gitdir, purpose="experiment", commit="abc", description="d") as own:
        before = lock_path(gitdir).stat().st_ino
        assert own.take_over(commit="abc", description="d") is None
        assert lock_path(gitdir).stat().st_ino == before and own.owned
