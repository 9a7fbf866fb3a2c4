"""Every git operation gitar performs, behind one class whose errors say what to do.

Two engines, each for what it is good at:
- the git CLI wherever git's own semantics matter: commits (only the CLI runs hooks),
  ref updates with compare-and-swap and a reflog message, moving the index and work tree;
- pygit2 for fast reads: resolving revisions, reading trees and blobs, notes.
A failing git command becomes a GitarError naming the command and git's own reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitar.errors import ExitCode, GitarError
from gitar.paths import Paths
from gitar.shared import environment
from gitar.store.refs import HEADS_PREFIX

# Variables git exports to hooks. A git process we start from inside a hook must see
# the repository's real index and directories, not the hook's temporary ones.
_HOOK_VARS = ("GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE", "GIT_PREFIX", "GIT_EDITOR",
              "GIT_REFLOG_ACTION", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return environment(names=_HOOK_VARS, sets=extra)


@dataclass(frozen=True)
class Change:
    path: str
    staged: bool  # differs between HEAD and the index
    unstaged: bool  # differs between the index and the work tree


@dataclass(frozen=True)
class CommitInfo:
    """What gitar reads of a commit: git.py is the only module that sees pygit2's objects."""

    sha: str
    parent_ids: tuple[str, ...]  # first parent first; () for a root commit
    tree_id: str
    message: str
    commit_time: int  # committer time, seconds since the epoch


@dataclass(frozen=True)
class TreeChange:
    """One path that differs between two commits' trees (tree_changes)."""

    path: str
    status: str  # git's letter: "A" added, "D" deleted, "M" modified, ...
    old_id: str  # the blob before; all zeros when added
    new_id: str  # the blob after; all zeros when deleted


class GitObjectError(Exception):
    """libgit2 could not read or write an object or ref (its reason is the message): a damaged or
    locked repository. Not a GitarError: where nobody expects it, it stays an internal error, as
    libgit2's own error was; the callers that expect it (a note write's retry, the summary's
    warning) catch it by name."""


class RefLocked(GitObjectError):
    """Another process holds the lock file of a ref libgit2 was writing (libgit2 says so with an
    OSError): nothing is wrong, the write can be tried again in a moment."""


@dataclass(frozen=True)
class Worktree:
    path: Path
    head: str | None  # None: no commit yet
    branch: str | None  # None: HEAD detached
    prunable: bool  # its directory is gone (`git worktree prune` forgets it)


class Git:
    """One repository with a work tree."""

    def __init__(self, repo: pygit2.Repository, index_file: Path | None = None) -> None:
        self.repo = repo
        # The index that "staged" reads (staged_paths, staged_blob, checkout-index) look at: None
        # means git's own choice (inside a hook, the hook's temporary index); `gitar try` points
        # it at the index it built for the commit, so the preflight checks exactly what it commits.
        self.index_file = index_file
        workdir: str | None = repo.workdir
        if workdir is None:
            raise GitarError(f"{repo.path} is a bare repository; gitar needs a clone with a work tree "
                             "(git clone it, then run gitar there)")
        self.root = Path(workdir).resolve()
        self.gitdir = Path(repo.path).resolve()
        # Shared across worktrees of one clone: notes, attempt refs, logs and the lock live here.
        self.common_dir = _common_dir(self.gitdir)

    @classmethod
    def discover(cls, start: str | os.PathLike[str] = ".") -> Git:
        path = pygit2.discover_repository(str(start))
        if path is None:
            raise GitarError(f"not inside a git repository ({Path(start).resolve()}); "
                             "cd into your research workspace (a clone of the gitar template)")
        return cls(pygit2.Repository(path))

    def with_index(self, index_file: Path) -> Git:
        """The same repository, with staged reads and hook-environment calls on another index."""
        return Git(self.repo, index_file)

    # -- the CLI ---------------------------------------------------------------

    def run(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
            input: str | None = None, keep_hook_env: bool = False, advice: str = "") -> subprocess.CompletedProcess[str]:
        base = self._hook_env() if keep_hook_env else clean_env()
        if env:
            base.update(env)
        try:
            proc = subprocess.run(["git", *args], cwd=self.root, env=base, input=input,
                                  capture_output=True, text=True, errors="replace")
        except OSError as e:
            raise GitarError(f"cannot run git: {e.strerror}; install git and put it on PATH",
                             ExitCode.INTERNAL) from None
        if check and proc.returncode != 0:
            raise GitarError(_failure_line(args, proc, advice), ExitCode.INTERNAL)
        return proc

    def out(self, *args: str, keep_hook_env: bool = False, env: Mapping[str, str] | None = None,
            input: str | None = None) -> str:
        return self.run(*args, keep_hook_env=keep_hook_env, env=env, input=input).stdout.strip()

    def _hook_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.index_file is not None:
            env["GIT_INDEX_FILE"] = str(self.index_file)
        return env

    # -- reads -----------------------------------------------------------------

    def resolve(self, rev: str) -> str:
        try:
            obj = self.repo.revparse_single(rev)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            # `gitar log`, not `git log`: discarded attempts live only under refs/gitar/attempts/.
            raise GitarError(f"unknown revision {rev!r}; give a commit, branch or tag name "
                             "(`gitar log` lists every attempt, discarded ones too)") from None
        return str(commit.id)

    def commit(self, sha: str) -> CommitInfo:
        info = self.find_commit(sha)
        if info is None:
            raise GitarError(f"{sha} is not a commit in this repository")
        return info

    def find_commit(self, sha: str) -> CommitInfo | None:
        """The commit sha names; None if it names none here (or is no hex id at all)."""
        obj = self._commit(sha)
        if obj is None:
            return None
        return CommitInfo(sha=str(obj.id), parent_ids=tuple(str(p) for p in obj.parent_ids),
                          tree_id=str(obj.tree_id), message=obj.message, commit_time=obj.commit_time)

    def _commit(self, sha: str) -> pygit2.Commit | None:
        try:
            obj = self.repo.get(sha)
        except ValueError:  # not a hex id at all (a hand-written record's "commit": "")
            return None
        return obj if isinstance(obj, pygit2.Commit) else None

    def commit_time(self, sha: str) -> int | None:
        """The commit's committer time; None if sha names no commit that can be read here."""
        try:
            commit = self._commit(sha)
        except pygit2.GitError:  # an object that cannot be read here: no time to give
            return None
        return commit.commit_time if commit is not None else None

    def first_parents(self, tip: str) -> Iterator[str]:
        """tip and its first-parent ancestors, newest first, read as the caller goes (stop any time)."""
        walker = self.repo.walk(tip, pygit2.enums.SortMode.NONE)
        walker.simplify_first_parent()
        for commit in walker:
            yield str(commit.id)

    def local_branches(self) -> list[str]:
        """The short names of the local branches, in no particular order."""
        return list(self.repo.branches.local)

    def ref_target(self, ref: str) -> str | None:
        try:
            return str(self.repo.references[ref].resolve().target)
        except (KeyError, pygit2.GitError):
            return None

    def current_branch(self) -> str | None:
        """The checked-out branch's short name; None when HEAD is detached."""
        if self.repo.head_is_detached:
            return None
        head = self.repo.references.get("HEAD")
        target = head.target if head is not None else None
        if isinstance(target, str) and target.startswith(HEADS_PREFIX):
            return target[len(HEADS_PREFIX):]
        return None

    def worktrees(self) -> list[Worktree]:
        """Every worktree of the clone (`git worktree list`), the main one first."""
        out: list[Worktree] = []
        for block in self.out("worktree", "list", "--porcelain").split("\n\n"):
            fields = dict(line.partition(" ")[::2] for line in block.splitlines() if line)
            if "worktree" not in fields or "bare" in fields:
                continue
            branch = fields.get("branch", "")
            out.append(Worktree(path=Path(fields["worktree"]).resolve(), head=fields.get("HEAD") or None,
                                branch=branch[len(HEADS_PREFIX):] if branch.startswith(HEADS_PREFIX) else None,
                                prunable="prunable" in fields))
        return out

    def head_is_unborn(self) -> bool:
        return bool(self.repo.head_is_unborn)

    def blob_at(self, sha: str, path: str) -> bytes | None:
        tree = self._tree_of(sha)
        try:
            entry = tree[path]
        except KeyError:
            return None
        obj = self.repo.get(entry.id)
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def _tree_of(self, sha: str) -> pygit2.Tree:
        obj = self._commit(sha)
        if obj is None:
            raise GitarError(f"{sha} is not a commit in this repository")
        return obj.tree

    def blob(self, oid: str) -> bytes | None:
        """The content of the blob oid names; None if there is none (an object id of another kind, or
        all zeros). GitObjectError if libgit2 cannot read it."""
        try:
            obj = self.repo.get(oid)
            return obj.data if isinstance(obj, pygit2.Blob) else None
        except pygit2.GitError as e:
            raise GitObjectError(str(e)) from None

    def blob_ids(self, sha: str, paths: Sequence[str]) -> list[tuple[str, str]] | None:
        """(path, blob id) for each of paths in the commit's tree; None if sha names no commit here.

        A path ending in "/" stands for every blob beneath that directory (path as "dir/sub/f").
        A path the tree lacks, or holds as another kind (a file for "dir/", a directory for a
        file), is left out; submodules are never blobs.
        """
        obj = self._commit(sha)
        if obj is None:
            return None
        tree = obj.tree
        out: list[tuple[str, str]] = []
        # One lookup per file, one walk per directory: a workspace tree holds gitar itself too.
        for path in paths:
            try:
                entry = tree[path.rstrip("/")]
            except (KeyError, ValueError):
                continue
            if isinstance(entry, pygit2.Blob) and not path.endswith("/"):
                out.append((path, str(entry.id)))
            elif isinstance(entry, pygit2.Tree) and path.endswith("/"):
                _blobs_under(entry, path, out)
        return out

    def tree_changes(self, old: str, new: str) -> list[TreeChange]:
        """The paths whose blobs differ between commit old's tree and commit new's (both must be
        commits here: KeyError otherwise, as libgit2's lookup)."""
        try:
            diff = self.repo.diff(old, new)
            return [TreeChange(path=(d.old_file if d.status == pygit2.enums.DeltaStatus.DELETED else d.new_file).path,
                               status=d.status_char(), old_id=str(d.old_file.id), new_id=str(d.new_file.id))
                    for d in diff.deltas]
        except pygit2.GitError as e:
            raise GitObjectError(str(e)) from None

    def ref_blob(self, ref: str) -> bytes | None:
        """The content of the blob a ref points at (gitar keeps small JSON pins so), or None."""
        target = self.ref_target(ref)
        obj = self.repo.get(target) if target is not None else None
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        if ancestor == descendant:
            return True
        return bool(self.repo.descendant_of(descendant, ancestor))

    def descends(self, ancestor: str, descendant: str) -> bool:
        """is_ancestor, False where either commit is unknown here (gc collected it, or never had it)."""
        try:
            return self.is_ancestor(ancestor, descendant)
        except (KeyError, ValueError, pygit2.GitError):
            return False

    # -- notes -----------------------------------------------------------------

    def note(self, ref: str, annotated: str) -> str | None:
        """The text of the note on `annotated` under the notes ref; None without one."""
        try:
            return str(self.repo.lookup_note(annotated, ref).message)
        except KeyError:
            return None

    def notes_tree(self, ref: str) -> str | None:
        """The tree id of the notes commit ref points at; None without one."""
        try:
            return str(self.repo.references[ref].peel(pygit2.Commit).tree_id)
        except (KeyError, ValueError, pygit2.GitError):
            return None

    def notes_in(self, tree: str) -> list[tuple[str, str]]:
        """(annotated object id, note blob id) for every note of a notes tree, in tree order.

        A note's path in the tree, slashes removed, is the id of the object it annotates: git
        spreads notes into ab/cdef… subtrees (fanout) as they grow. As for git and libgit2, any
        other entry of the tree is not a note. One walk, no blob read: what the review commands
        list 10,000 times per call.
        """
        obj = self.repo[tree]
        assert isinstance(obj, pygit2.Tree)
        out: list[tuple[str, str]] = []
        _walk_notes(obj, "", len(tree), out)  # 40 hex digits, 64 in a SHA-256 repository
        return out

    def notes_about(self, tree: str) -> int:
        """About how many notes a notes tree holds, without reading them: notes spread evenly over a fanout."""
        obj = self.repo[tree]
        assert isinstance(obj, pygit2.Tree)
        first = next(iter(obj), None)
        if isinstance(first, pygit2.Tree):
            return len(obj) * len(first)
        return len(obj)

    def note_with_line(self, scratch: str, old: str | None, annotated: str, line: str) -> str:
        """The notes commit that adds `line` to the note on `annotated` on top of notes commit `old`
        (None: the first note), made on the ref `scratch` only; GitObjectError if libgit2 fails,
        RefLocked if it met another writer's lock file."""
        repo = self.repo
        try:
            signature = _signature(repo)
            # The note is read from, and written onto, the commit the caller's compare-and-swap names.
            if old is not None:
                repo.references.create(scratch, pygit2.Oid(hex=old), force=True)
                try:
                    existing = repo.lookup_note(annotated, scratch).message
                except KeyError:
                    existing = ""
            else:
                with contextlib.suppress(KeyError):
                    repo.references.delete(scratch)
                existing = ""
            text = existing.rstrip("\n") + ("\n" if existing.strip() else "") + line + "\n"
            repo.create_note(text, signature, signature, annotated, scratch, True)  # returns the note's blob
            return str(repo.references[scratch].resolve().target)
        except pygit2.GitError as e:
            raise GitObjectError(str(e)) from None
        except OSError as e:  # libgit2 met another writer's lock file
            raise RefLocked(str(e)) from None

    def operation_in_progress(self) -> str | None:
        """A merge, rebase, cherry-pick, revert or bisect that a commit would interfere with."""
        checks = [("MERGE_HEAD", "a merge"), ("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or am"),
                  ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"), ("BISECT_LOG", "a bisect")]
        for name, what in checks:
            if (self.gitdir / name).exists():
                return what
        return None

    def changes(self) -> list[Change]:
        """Tracked paths that differ from HEAD, in the index or the work tree."""
        out = self.run("status", "--porcelain=v1", "-z", "--untracked-files=no").stdout
        changes: list[Change] = []
        fields = out.split("\0")
        i = 0
        while i < len(fields):
            entry = fields[i]
            i += 1
            if len(entry) < 4:
                continue
            x, y, path = entry[0], entry[1], entry[3:]
            if x in "RC":  # a rename carries its source path in the next field
                i += 1
            changes.append(Change(path=path, staged=x not in " ?", unstaged=y not in " ?"))
        return changes

    def staged_paths(self) -> list[str]:
        """Paths staged in the index being committed (inside a pre-commit hook: the hook's index)."""
        out = self.run("diff", "--cached", "--name-only", "-z", "--no-renames", keep_hook_env=True).stdout
        return [p for p in out.split("\0") if p]

    def staged_blob(self, path: str) -> bytes:
        proc = subprocess.run(["git", "show", f":{path}"], cwd=self.root, env=self._hook_env(), capture_output=True)
        if proc.returncode != 0:
            raise GitarError(f"cannot read the staged {path}: {proc.stderr.decode(errors='replace').strip()}",
                             ExitCode.INTERNAL)
        return proc.stdout

    # -- writes ----------------------------------------------------------------

    def update_ref(self, ref: str, new: str, old: str | None, message: str) -> None:
        """Move a ref with compare-and-swap: fails if someone else moved it meanwhile."""
        args = ["update-ref", "-m", message, ref, new]
        if old is not None:
            args.append(old)
        else:
            args.append("")  # must not exist yet
        self.run(*args, advice=f"{ref} was moved by someone else; nothing was overwritten")

    def pin(self, ref: str, sha: str, message: str) -> None:
        """Create or move a bookkeeping ref without CAS (attempt pins are idempotent)."""
        self.run("update-ref", "-m", message, ref, sha)

    def keep_ref(self, ref: str, sha: str) -> None:
        """Point ref at sha in-process (no git process, no reflog, no compare-and-swap): a ref that only
        keeps a commit alive. RefLocked while another process holds the ref's lock (try again); a
        failure a retry cannot mend (an id that is no hex) is ignored."""
        try:
            self.repo.references.create(ref, pygit2.Oid(hex=sha), force=True)
        except OSError as e:
            raise RefLocked(str(e)) from None
        except (pygit2.GitError, ValueError):
            pass

    def delete_ref(self, ref: str) -> None:
        self.run("update-ref", "-d", ref, check=False)

    @contextlib.contextmanager
    def scratch_ref(self, prefix: str) -> Iterator[str]:
        """A private ref name under prefix for a while, removed afterwards however the block ends.

        Where a commit is built before a compare-and-swap moves the real ref onto it (a record's
        note, a notes merge): the real ref never shows a half-made state, and nothing else
        writes the scratch ref, so building it needs no lock of its own.
        """
        scratch = f"{prefix}{uuid.uuid4().hex}"
        try:
            yield scratch
        finally:
            with contextlib.suppress(KeyError, pygit2.GitError, OSError):
                self.repo.references.delete(scratch)

    def export_tree(self, sha: str, dest: Path) -> None:
        """Write the files of a commit into dest (a snapshot to run from), without touching the index."""
        dest.mkdir(parents=True, exist_ok=True)
        self._write_tree(self._tree_of(sha), dest)

    def _write_tree(self, tree: pygit2.Tree, dest: Path) -> None:
        for entry in tree:
            target = dest / str(entry.name)
            if entry.filemode == pygit2.GIT_FILEMODE_TREE:
                target.mkdir(exist_ok=True)
                sub = self.repo.get(entry.id)
                assert isinstance(sub, pygit2.Tree)
                self._write_tree(sub, target)
            elif entry.filemode == pygit2.GIT_FILEMODE_LINK:
                blob = self.repo.get(entry.id)
                assert isinstance(blob, pygit2.Blob)
                os.symlink(blob.data.decode(), target)
            elif entry.filemode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
                blob = self.repo.get(entry.id)
                assert isinstance(blob, pygit2.Blob)
                target.write_bytes(blob.data)
                if entry.filemode == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE:
                    target.chmod(0o755)
            # submodules (commit entries) are skipped: a snapshot holds this repository's files only


def _blobs_under(tree: pygit2.Tree, prefix: str, out: list[tuple[str, str]]) -> None:
    for entry in tree:
        if isinstance(entry, pygit2.Blob):
            out.append((prefix + str(entry.name), str(entry.id)))
        elif isinstance(entry, pygit2.Tree):
            _blobs_under(entry, f"{prefix}{entry.name}/", out)


_HEX = "0123456789abcdefABCDEF"


def _walk_notes(tree: pygit2.Tree, prefix: str, width: int, out: list[tuple[str, str]]) -> None:
    # In tree order, depth first: the order of libgit2's iterator and of `git notes list`.
    # The blobs are not read here.
    for entry in tree:
        path = prefix + str(entry.name)
        if isinstance(entry, pygit2.Blob):
            if len(path) == width and not path.strip(_HEX):  # hex digits only: nothing is left
                out.append((path.lower(), str(entry.id)))
        elif isinstance(entry, pygit2.Tree) and len(path) < width:
            _walk_notes(entry, path, width, out)


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature("gitar", "gitar@localhost")


def _common_dir(gitdir: Path) -> Path:
    common = gitdir / "commondir"
    if common.exists():
        return (gitdir / common.read_text().strip()).resolve()
    return gitdir


def _failure_line(args: Sequence[str], proc: subprocess.CompletedProcess[str], advice: str) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"exit code {proc.returncode}"
    for ln in lines:
        if ln.startswith(("fatal:", "error:")):
            reason = ln
            break
    msg = f"git {args[0]} failed: {reason}"
    if "index.lock" in reason:
        msg += "; another git process is running in this repository — wait for it, or remove .git/index.lock if none is"
    elif advice:
        msg += f"; {advice}"
    return msg


def gitar_dir() -> Path | None:
    """.git/gitar/ of the repository here, or None outside one (where an internal error's traceback goes)."""
    try:
        return Paths.of(Git.discover()).base
    except Exception:  # any failure here must not hide the error being reported
        return None
