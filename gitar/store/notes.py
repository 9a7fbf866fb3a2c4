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

import pygit2

from gitar.store.git import Git, clean_env

# From about this many notes on, git streams them. Below it, starting git costs more than it saves.
STREAM_FROM = 500

_HEX = "0123456789abcdefABCDEF"


def note_blobs(git: Git, ref: str) -> Iterator[tuple[str, bytes]]:
    """(annotated object id, note blob) for every note under ref, in the notes tree's order.

    A note's path in the tree, slashes removed, is the id of the object it annotates: git
    spreads notes into ab/cdef… subtrees (fanout) as they grow. As for git and libgit2,
    any other entry of the tree is not a note.
    """
    tree = note_tree(git, ref)
    if tree is None:
        return
    streamed: set[str] = set()
    if _about(tree) >= STREAM_FROM:
        complete = yield from _streamed(git, ref, streamed)
        if complete:
            return
    for sha, blob in walk_notes(tree):
        if sha in streamed:
            continue
        try:
            data = blob.data
        except (KeyError, pygit2.GitError):  # a note whose blob is gone holds no record
            data = b""
        yield sha, data


def note_tree(git: Git, ref: str) -> pygit2.Tree | None:
    """The tree of the notes commit ref points at; None without one."""
    try:
        return git.repo.references[ref].peel(pygit2.Commit).tree
    except (KeyError, ValueError, pygit2.GitError):
        return None


def walk_notes(tree: pygit2.Tree) -> list[tuple[str, pygit2.Blob]]:
    """(annotated object id, note blob, not yet read) for every note of a notes tree, in tree order."""
    notes: list[tuple[str, pygit2.Blob]] = []
    _walk(tree, "", len(str(tree.id)), notes)  # 40 hex digits, 64 in a SHA-256 repository
    return notes


def _about(tree: pygit2.Tree) -> int:
    """About how many notes the tree holds, without reading them: notes spread evenly over a fanout."""
    first = next(iter(tree), None)
    if isinstance(first, pygit2.Tree):
        return len(tree) * len(first)
    return len(tree)


def _walk(tree: pygit2.Tree, prefix: str, width: int, out: list[tuple[str, pygit2.Blob]]) -> None:
    # In tree order, depth first: the order of libgit2's iterator and of `git notes list`.
    # The blobs are not read here: a blob's data is loaded when asked for.
    for entry in tree:
        path = prefix + str(entry.name)
        if isinstance(entry, pygit2.Blob):
            if len(path) == width and not path.strip(_HEX):  # hex digits only: nothing is left
                out.append((path.lower(), entry))
        elif isinstance(entry, pygit2.Tree) and len(path) < width:
            _walk(entry, path, width, out)


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
