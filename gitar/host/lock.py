"""One experiment at a time per repository, or per GPU: a lock file in the git directory.

`<gitdir>/gitar/lock` (`lock-gpuK` in a worktree pinned to GPU K, gitar/paths.py) holds a JSON record of its holder. It is created with
O_CREAT|O_EXCL, so two processes can never both create it. A lock whose holder died
(same host; pid gone, a zombie, or a different process under a reused pid) is stale
and is cleared. `gitar try` passes its token down (GITAR_LOCK_TOKEN) to the git commit
and its hooks, which join the lock instead of fighting over it; only the holder named
in the file releases it, and it can hand the lock to a detached runner (transfer).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gitar.errors import ExitCode, GitarError
from gitar.files import fsync_dir, write_durable
from gitar.host.processes import process_alive, start_time

CORRUPT_STALE_AFTER_S = 5.0  # an unreadable lock this young may be being written right now
_CORRUPT_WAIT_S = 0.5  # how long to wait for such a lock to become readable
_CLEARS = 20  # stale locks cleared (or vanished) in one acquire before giving up


def new_token() -> str:
    return uuid.uuid4().hex


def lock_path(gitdir: Path, name: str = "lock") -> Path:
    """The lock file. One per GPU: a worktree pinned to device K locks `lock-gpuK` (paths.py)."""
    return Path(gitdir) / "gitar" / name


@dataclass(frozen=True)
class LockInfo:
    pid: int
    pid_start: int | None  # /proc/<pid>/stat field 22: tells a reused pid apart (None off Linux)
    host: str
    token: str
    purpose: str
    commit: str | None  # the commit being run (None while `gitar try` has yet to make it)
    started: float  # unix time
    description: str | None = None  # that commit's description, for the refusal of a concurrent run

    def alive(self) -> bool:
        """Whether the holder still runs. A holder on another host is assumed alive: it cannot be checked."""
        if self.host != socket.gethostname():
            return True
        return process_alive(self.pid, self.pid_start)

    def describe(self) -> str:
        """e.g. `1a2b3c4 "wider MLP" (pid 4242, try, since 2026-01-01 10:00:00)`."""
        where = f"pid {self.pid}" + (f" on {self.host}" if self.host != socket.gethostname() else "")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        named = f'"{self.description[:80]}" ' if self.description else ""
        what = f"{self.commit[:7]} {named}" if self.commit else named
        return f"{what}({where}, {self.purpose}, since {since})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_FIELDS = tuple(LockInfo.__dataclass_fields__)
_OPTIONAL = ("description",)  # absent from locks written by an older gitar, which must still read as live


def _parse(raw: bytes) -> LockInfo | None:
    """The record in a lock file, or None if it is empty, truncated or not a lock record.

    Unknown keys are ignored: a newer gitar may add some, and its live lock must not
    look corrupt (and so, after a few seconds, stale) to an older one.
    """
    try:
        obj: Any = json.loads(raw.decode("utf-8"))
        info = LockInfo(**{k: obj[k] for k in _FIELDS if k in obj or k not in _OPTIONAL})
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    typed = (
        isinstance(info.pid, int) and isinstance(info.token, str) and isinstance(info.host, str)
        and isinstance(info.purpose, str) and isinstance(info.started, (int, float))
        and (info.pid_start is None or isinstance(info.pid_start, int))
        and (info.commit is None or isinstance(info.commit, str))
        and (info.description is None or isinstance(info.description, str))
    )
    return info if typed else None


@dataclass(frozen=True)
class _Seen:
    """One look at a lock file: which file it was and what it said."""

    # An inode number is reused as soon as a file is deleted, so the device and inode
    # alone do not tell two lock files apart; the mtime and the content (a unique token)
    # do. A file created after our look has a newer mtime even while still empty.
    key: tuple[int, int, int]  # device, inode, mtime in ns
    raw: bytes

    @property
    def age_s(self) -> float:
        return time.time() - self.key[2] / 1e9


def _look(path: Path) -> _Seen | None:
    """The lock file, identity and content read from one open file; None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return _Seen((st.st_dev, st.st_ino, st.st_mtime_ns), b"".join(chunks))
    finally:
        os.close(fd)


def _remove_if_same(path: Path, seen: _Seen) -> None:
    """Delete the lock file only if it is still the file we looked at.

    Moving it aside first makes the check and the removal one step: if another process
    replaced it in between, what we moved is theirs and goes back.
    """
    aside = path.with_name(f"{path.name}.{new_token()}.removing")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _look(aside) != seen:
        with suppress(FileExistsError):  # put it back, unless a newer lock took its place meanwhile
            os.link(aside, path)
    os.unlink(aside)


class Lock:
    """A held (owned) or joined lock. Only the owner, the pid named in the file, removes it."""

    def __init__(self, path: Path, info: LockInfo, token: str, owned: bool) -> None:
        self.path = path
        self.info = info
        self.token = token
        self.owned = owned

    def release(self) -> None:
        """Remove the lock file if it still names us, by token and pid; never another's lock.

        The pid matters too: after another process's transfer() the file keeps our token
        but names the new holder, and only that holder may remove it.
        """
        if not self.owned:
            return
        self.owned = False
        seen = _look(self.path)
        if seen is None:
            return
        current = _parse(seen.raw)
        if current is not None and current.token == self.token and current.pid == os.getpid():
            _remove_if_same(self.path, seen)

    def transfer(self, pid: int, *, commit: str | None = None, description: str | None = None) -> None:
        """Make `pid` the holder (a detached runner taking over from `gitar try`), and with
        `commit` name the commit that now runs (and its description) in the lock.

        The file is replaced atomically, so a reader sees the old or the new holder, never
        half of one. This Lock stays the owner only if `pid` is this process.
        """
        seen = _look(self.path)
        current = _parse(seen.raw) if seen is not None else None
        if current is None or current.token != self.token:
            raise GitarError(f"cannot hand over the experiment lock {self.path}: it is no longer ours; "
                             "see `gitar status`", ExitCode.INTERNAL)
        pid_start = start_time(pid)
        if pid_start is None and Path("/proc/self/stat").exists():
            raise GitarError(f"cannot hand over the experiment lock to pid {pid}: no such process",
                             ExitCode.INTERNAL)
        info = LockInfo(pid=pid, pid_start=pid_start, host=current.host, token=self.token,
                        purpose=current.purpose, commit=commit or current.commit, started=current.started,
                        description=description if commit else current.description)
        write_durable(self.path, lambda tmp: tmp.write_text(info.to_json() + "\n", encoding="utf-8"))
        self.info = info
        self.owned = pid == os.getpid()

    def take_over(self, *, commit: str, description: str | None) -> LockInfo | None:
        """Hold a joined lock in this process from now on, naming `commit` (and its description);
        returns the holder it was joined from, None when this process took it itself.

        A run that joined the lock of the `gitar try` that made its commit (same token) becomes
        the holder, so the lock never looks stale while the run goes on, even once that `gitar
        try` has returned (`--detach`); a lock taken here names the commit already.
        """
        if self.owned:
            return None
        joined = self.info
        self.transfer(os.getpid(), commit=commit, description=description)
        return joined

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_new(path: Path, info: LockInfo) -> None:
    """Create path exclusively and make the record durable; FileExistsError if it exists."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, info.to_json().encode() + b"\n")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave an empty lock behind
        raise
    os.close(fd)
    fsync_dir(path.parent)


def read(gitdir: Path, name: str = "lock") -> LockInfo | None:
    """The current holder, or None if there is no lock file or it cannot be read."""
    seen = _look(lock_path(gitdir, name))
    return _parse(seen.raw) if seen is not None else None


def clear_stale(gitdir: Path, name: str = "lock") -> bool:
    """Remove the lock if its holder is dead, or it is unreadable and old; True if removed.

    For recovery and `gitar status`, which find a dead run without wanting the lock.
    """
    path = lock_path(gitdir, name)
    seen = _look(path)
    if seen is None:
        return False
    held = _parse(seen.raw)
    if held.alive() if held is not None else seen.age_s < CORRUPT_STALE_AFTER_S:
        return False
    _remove_if_same(path, seen)
    return True


def held_message(info: LockInfo, then: str = "wait for it with `gitar wait` or see `gitar status`") -> str:
    """The one refusal of a second experiment while one runs, naming the one that runs."""
    return f"another experiment is running in this repository: {info.describe()}; {then}"


def acquire(gitdir: Path, *, purpose: str, token: str | None = None, commit: str | None = None,
            description: str | None = None, name: str = "lock") -> Lock:
    """Take the repository's experiment lock, join it (same token), or raise GitarError REFUSED."""
    path = lock_path(gitdir, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GitarError(f"cannot create {path.parent}: {e.strerror}") from None
    token = token or new_token()
    me = os.getpid()
    info = LockInfo(pid=me, pid_start=start_time(me), host=socket.gethostname(), token=token,
                    purpose=purpose, commit=commit, started=time.time(), description=description)
    corrupt_since: float | None = None
    clears = 0
    while clears < _CLEARS:
        try:
            _write_new(path, info)
            return Lock(path, info, token, owned=True)
        except FileExistsError:
            pass
        except OSError as e:
            raise GitarError(f"cannot write the experiment lock {path}: {e.strerror}") from None
        seen = _look(path)
        if seen is None:
            clears += 1  # released meanwhile
            continue
        held = _parse(seen.raw)
        if held is None:
            # Empty or truncated: a crash between create and write, or a writer right now.
            if seen.age_s < CORRUPT_STALE_AFTER_S:
                corrupt_since = corrupt_since or time.monotonic()
                if time.monotonic() - corrupt_since > _CORRUPT_WAIT_S:
                    raise GitarError(f"the experiment lock {path} is unreadable and only "
                                     f"{seen.age_s:.0f} s old (being written?); try again in "
                                     f"{CORRUPT_STALE_AFTER_S:g} s, it then counts as stale")
                time.sleep(0.05)
                continue
        elif held.token == token:
            return Lock(path, held, token, owned=held.pid == me)
        elif held.alive():
            raise GitarError(held_message(held), ExitCode.REFUSED)
        _remove_if_same(path, seen)  # stale: its holder is dead
        clears += 1
    raise GitarError(f"could not take the experiment lock {path} after {_CLEARS} attempts; "
                     "another process keeps replacing it; see `gitar status`")
