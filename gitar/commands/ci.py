"""`gitar ci BRANCH`: the job a CI runner with a GPU runs for a pushed experiment branch.

Agents without a GPU commit (preflight only) and push; the runner measures what they
pushed. Each job:
1. finishes what a killed job left behind (recovery: its run is recorded as aborted);
2. syncs: the remote's records and branches in, this clone's records out;
3. finds the commits of the pushed branch that have no verdict yet: the first-parent
   chain from the pushed tip back to the newest commit with one (or to where the branch
   left the non-experiment history, whose commit is then the baseline);
4. puts the branch on the best at that moment and measures the chain, oldest first
   (`gitar run` semantics: record, then move the branch), syncing after each;
5. syncs once more, so records and branch moves reach the remote.

Every record the job writes is signed with the runner's Ed25519 key (gitar/store/signing.py:
GITAR_RUNNER_KEY or ~/.config/gitar/runner-key, made on first use or by `gitar ci --init-key`,
which prints the public key for ground.json experiment.runner_keys). The key must stay
out of reach of train.py: the sandbox hides it (signing.key_path()).

Nothing is pushed before it is written: a runner killed mid-run pushed the records of
the runs it finished and nothing of the one it was in; that commit still has no verdict,
so the next job measures it again. Sync steps can be skipped (`--no-sync`) so that a
workflow can give push credentials to the sync steps only, never to the step that runs
the agent's code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gitar.commands.run import measure_chain
from gitar.config.schema import ground_at
from gitar.errors import GitarError
from gitar.host import confine
from gitar.loop.judge import Best, current_best
from gitar.loop.opened import Opened
from gitar.loop.recovery import recover
from gitar.sharing.sync import SyncResult, judged, sync
from gitar.store import ledger, pins, signing
from gitar.store.branch import move_branch
from gitar.store.git import Git
from gitar.store.records import Notebook, Record
from gitar.store.refs import branch_ref, tracking_branch_ref


@dataclass
class CiOutcome:
    branch: str
    tip: str  # the pushed tip that was measured
    pending: list[str]  # the commits that had no verdict, oldest first
    records: list[Record] = field(default_factory=list)
    syncs: list[SyncResult] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)


def run_ci(branch: str | None = None, remote: str = "origin", *, with_sync: bool = True,
           start: str | Path = ".", on_record: Callable[[Record], None] | None = None) -> CiOutcome:
    """The job; every record it writes is signed with the runner's key (made on first use)."""
    signer, created = signing.load_or_create()
    if created:
        print(f"gitar: {key_line(signer, created=True)}", file=sys.stderr)
    with signing.signing(signer):
        return _run_ci(branch, remote, with_sync=with_sync, start=start, on_record=on_record)


def key_line(signer: signing.Signer, *, created: bool) -> str:
    """What to tell the user about the runner key: where it is, and the line ground.json needs."""
    return (f"{'created the' if created else 'the'} runner key {signer.path} (key id {signer.key_id}); "
            f'trust it by adding "{signer.public}" to ground.json experiment.runner_keys')


def init_key() -> str:
    """`gitar ci --init-key`: make the runner key if there is none; the line to put in ground.json."""
    signer, created = signing.load_or_create()
    return key_line(signer, created=created)


def _run_ci(branch: str | None, remote: str, *, with_sync: bool, start: str | Path,
            on_record: Callable[[Record], None] | None) -> CiOutcome:
    git = Git.discover(start)
    name = branch or git.current_branch()
    if not name:
        raise GitarError("HEAD is detached and no BRANCH was given; name the pushed branch: "
                         "`gitar ci autoresearch/TAG`")
    ws = Opened.of(git)
    recovered = recover(ws)
    syncs: list[SyncResult] = []
    if with_sync:
        syncs.append(sync(git, remote))
    tip = git.ref_target(tracking_branch_ref(remote, name)) or git.ref_target(branch_ref(name))
    if tip is None:
        raise GitarError(f"no branch {name} on {remote} nor in this clone; push it, or fetch it with "
                         f"`gitar sync {remote}`")
    ground = ground_at(git, tip)
    confine.check_available(ground)
    prefix = ground.experiment.branch_prefix
    if not ground.experiment.is_experiment_branch(name):
        raise GitarError(f"{name} is not an experiment branch (branches named {prefix}TAG); "
                         "the runner measures experiment branches only")
    outcome = CiOutcome(branch=name, tip=tip, pending=[], syncs=syncs, recovered=recovered)

    def after_each(record: Record) -> None:
        if on_record is not None:
            on_record(record)
        if with_sync:
            try:
                syncs.append(sync(git, remote))
            except GitarError as e:  # the records are safe here; the final sync tries again
                print(f"gitar: warning: sync after {record.commit[:7]} failed: {e.message}", file=sys.stderr)

    with ws.lock(purpose="ci", commit=tip):
        pending, best = pending_commits(ws.notebook, name, tip, prefix)
        outcome.pending = pending
        _check_out(ws.notebook, name, best.commit if best else (pending[0] if pending else tip), tip)
        outcome.records = measure_chain(ws, name, pending, best, after_each)
    if with_sync:  # also when nothing ran: the branch may have moved onto the best
        syncs.append(sync(git, remote))
    return outcome


def pending_commits(notebook: Notebook, branch: str, tip: str, prefix: str) -> tuple[list[str], Best | None]:
    """The commits without a verdict, oldest first, and the best they build on (None: no baseline yet)."""
    git = notebook.git
    walk = _experiment_chain(git, tip, prefix, pins.base_commit(git, branch))
    pending: list[str] = []
    for sha in walk:
        if judged(notebook.records(sha), branch):
            break
        pending.append(sha)
    for sha in walk[len(pending):]:
        best = current_best(notebook, branch, sha)
        if best is not None:
            return pending[::-1], best
    return pending[::-1], None


def _experiment_chain(git: Git, tip: str, prefix: str, base: str | None = None) -> list[str]:
    """First-parent commits from the tip, newest first, down to and including where the branch started.

    Where it started is its recorded base (refs/gitar/base/<branch>, made by `gitar init` and
    shared by `gitar sync`) when the tip descends from it. Without one, the experiment's own
    commits are those no other history has: commits reachable from a branch outside the
    experiment prefix (main, the template) are not experiments, and the newest of them on the
    chain is the start. The start is the baseline.
    """
    if base is not None and git.is_ancestor(base, tip):
        return [*git.out("rev-list", "--first-parent", tip, f"^{base}").split(), base]
    own = git.out("rev-list", "--first-parent", tip, "--not",
                  f"--exclude={branch_ref(prefix)}*", f"--glob={branch_ref('*')}",
                  f"--exclude={tracking_branch_ref('*', prefix)}*", f"--glob={tracking_branch_ref('*', '')}").split()
    last = own[-1] if own else None
    if last is None:
        return [tip]
    parents = git.commit(last).parent_ids
    return [*own, str(parents[0])] if parents else own


def _check_out(notebook: Notebook, branch: str, start_at: str, tip: str) -> None:
    """The branch, checked out, on the commit the chain builds on.

    A runner's branch is derived from the remote branch and the records, so it may be moved;
    but never off a commit that exists nowhere else and has no verdict.
    """
    git = notebook.git
    ref = branch_ref(branch)
    local = git.ref_target(ref)
    if local is None:
        git.update_ref(ref, start_at, None, f"gitar ci: {branch} from the pushed branch")
        ledger.branch_set(git, branch, start_at)
    elif not git.is_ancestor(local, tip) and not judged(notebook.records(local), branch) \
            and not notebook.is_pinned(local):
        raise GitarError(f"{branch} here ({local[:7]}) has commits that are neither pushed nor measured; "
                         "push them, or give the runner a clone of its own")
    if git.current_branch() != branch:
        git.run("switch", "--quiet", branch, advice="the runner's clone must have no local changes")
    local = git.ref_target(ref)
    if local is not None and local != start_at:
        move_branch(git, branch, local, start_at, f"gitar ci: start at {start_at[:7]}")
