"""Every note of a notes ref at once: what the review commands read 10,000 times per call.

A short notebook is read here, with one walk of the notes commit's tree. A long one is
streamed by git: `git notes list` piped into `git cat-file --batch`, which inflates the
packed blobs in two other processes while this one parses what they have already written
(the notes' JSON is most of a review command's work). Whatever git does, the result is
the same: if the stream stops early (git missing or failing, an object it cannot read),
the notes it did not deliver are read here.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Generator, Iterator

from gitar.store.git import Git, GitObjectError, clean_env

# From about this many notes on, git streams them. Below it, starting git costs more than it saves.
STREAM_FROM = 500


def note_blobs(git: Git, ref: str) -> Iterator[tuple[str, bytes]]:
    """(annotated object id, note blob) for every note under ref, in the notes tree's order.

    Which entries of the tree are notes, and what they annotate: Git.notes_in.
    """
    tree = git.notes_tree(ref)
    if tree is None:
        return
    streamed: set[str] = set()
    if git.notes_about(tree) >= STREAM_FROM:
        complete = yield from _streamed(git, ref, streamed)
        if complete:
            return
    yield from _walk(git, tree, streamed)


def _walk(git: Git, tree: str, delivered: set[str]) -> Iterator[tuple[str, bytes]]:
    """The notes read here, in tree order: those git's stream did not deliver."""
    for sha, blob in git.notes_in(tree):
        if sha in delivered:
            continue
        try:
            data = git.blob(blob) or b""
        except GitObjectError:  # a note whose blob is gone holds no record
            data = b""
        yield sha, data


def _streamed(git: Git, ref: str, delivered: set[str]) -> Generator[tuple[str, bytes], None, bool]:
    """The notes as `git notes list | git cat-file --batch` writes them; True if that was all of them.

    cat-file's format echoes the rest of each input line (%(rest)): the annotated object's id
    that `git notes list` wrote beside the blob's. Every note delivered is added to `delivered`.
    """
    env = clean_env()
    try:
        lister = subprocess.Popen(["git", "notes", "--ref", ref, "list"], cwd=git.root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        reader = subprocess.Popen(["git", "cat-file", "--batch=%(objectsize) %(rest)", "--buffer"], cwd=git.root,
                                  env=env, stdin=lister.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  bufsize=1 << 20)
    except OSError:
        _stop(lister)
        return False
    assert lister.stdout is not None and reader.stdout is not None
    lister.stdout.close()  # the reader's now: if it dies, the lister gets SIGPIPE rather than blocking
    with contextlib.suppress(ImportError, AttributeError, OSError):  # Linux: git may run 1 MiB ahead of the parsing
        import fcntl

        fcntl.fcntl(reader.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    readline, read = reader.stdout.readline, reader.stdout.read
    ended = False  # git wrote everything it had to write
    try:
        while True:
            # "<size> <annotated id>", the blob, "\n"; a blob git cannot read is "<id> missing".
            header = readline()
            if not header:
                ended = True
                break
            field, _, sha = header[:-1].partition(b" ")
            size = int(field)  # ValueError for "missing"
            data = read(size)
            if len(data) != size or read(1) != b"\n":
                break
            annotated = sha.decode()
            delivered.add(annotated)
            yield annotated, data
    except ValueError:
        pass
    finally:
        reader.stdout.close()
        for proc in (reader, lister):
            if not ended and proc.poll() is None:  # stopped early: git has nothing more to tell
                proc.kill()
            proc.wait()
    return ended and lister.returncode == 0 and reader.returncode == 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
