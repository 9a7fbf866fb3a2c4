"""`gitar run [REV] [--repeat N]`: measure existing commits without committing.

For the baseline (the first run of a fresh branch), for re-measuring the best, and
for commits that were committed without being run (pushed by an agent for a CI runner):
REV may then be a descendant of the branch tip, and each commit between the tip and REV
that has no verdict yet is measured in order, oldest first, as the attempt it would have
been: the branch moves onto it, it is judged against the best at that moment, recorded,
and the branch stays on it if kept or goes back to the best if not (record first, then
the move: experiment.finish). A chain interrupted half way leaves a consistent branch:
the commits measured so far are settled, and the rest have no verdict and are measured
by the next `gitar run` or `gitar ci`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gitar.errors import GitarError
from gitar.host import confine
from gitar.loop import experiment
from gitar.loop.attempt import reject_unfit
from gitar.loop.judge import Best, current_best
from gitar.loop.opened import Opened
from gitar.loop.workspace import open_workspace
from gitar.numbers import bpb
from gitar.review.noise import commit_spread
from gitar.sharing.sync import judged
from gitar.store import ledger
from gitar.store.branch import move_branch
from gitar.store.git import Git
from gitar.store.records import KEEP, Notebook, Record
from gitar.store.refs import branch_ref
from gitar.text import subject


def run_commit(rev: str = "HEAD", repeat: int = 1, start: str | Path = ".") -> list[Record]:
    if repeat < 1:
        raise GitarError(f"--repeat must be at least 1, got {repeat}")
    ws = open_workspace(start)
    confine.check_available(ws.ground)
    sha = ws.git.resolve(rev)
    tip = ws.git.ref_target(branch_ref(ws.branch))
    if sha != tip:
        if tip is None:
            raise GitarError(f"{ws.branch} has no commit; check out an experiment branch")
        if repeat != 1:
            raise GitarError(f"--repeat re-measures the tip of {ws.branch}; {rev} ({sha[:7]}) is not the tip")
        chain = unmeasured_chain(ws.notebook, ws.branch, tip, sha, rev)
        with ws.lock(purpose="run", commit=sha, description=_subject(ws.git, sha)):
            best = current_best(ws.notebook, ws.branch, tip)
            return measure_chain(ws, ws.branch, chain, best)
    records: list[Record] = []
    with ws.lock(purpose="run", commit=sha, description=_subject(ws.git, sha)):
        for _ in range(repeat):
            plan = experiment.plan_rerun(ws, sha, ws.branch)
            records.append(experiment.execute(ws, plan))
    return records


def _subject(git: Git, sha: str) -> str:
    return subject(git.commit(sha).message)


def best_after_remeasuring(records: list[Record], start: str | Path = ".") -> str | None:
    """The line that ends a re-measurement: the best's mean over all its runs now, and their spread.

    None when no run re-measured the best (a baseline alone, a chain of new commits).
    """
    rerun = next((r for r in reversed(records) if r.kind == "rerun"), None)
    if rerun is None:
        return None
    notebook = Notebook(Git.discover(start))
    best = current_best(notebook, rerun.branch, rerun.commit)
    if best is None:
        return None
    spread = commit_spread(notebook.records(rerun.commit), rerun.branch)
    sigma = f", σ {spread.std:.6f} between its runs" if spread is not None else ""
    return f"best {rerun.commit[:7]} val_bpb {bpb(best.val_bpb)} (mean of {best.runs} runs{sigma})"


def unmeasured_chain(notebook: Notebook, branch: str, tip: str, sha: str, rev: str) -> list[str]:
    """The first-parent commits after `tip` up to `sha`, oldest first; each must lack a verdict."""
    git = notebook.git
    if not git.is_ancestor(tip, sha):
        raise GitarError(f"{rev} ({sha[:7]}) is neither the tip of {branch} ({tip[:7]}) nor a descendant "
                         "of it; check out the branch whose commit you want to measure")
    chain: list[str] = []
    current: str | None = sha
    while current is not None and current != tip:
        if judged(notebook.records(current), branch):
            raise GitarError(f"{current[:7]} (between {branch} and {rev}) was measured already; "
                             f"move {branch} onto it if it is the one to build on")
        chain.append(current)
        parents = git.commit(current).parent_ids
        current = str(parents[0]) if parents else None
    if current != tip:
        raise GitarError(f"{rev} ({sha[:7]}) reaches {branch} ({tip[:7]}) only through a merge's second "
                         "parent; measure a linear chain of commits on top of the branch")
    return chain[::-1]


def measure_chain(ws: Opened, branch: str, chain: list[str], best: Best | None,
                  after_each: Callable[[Record], None] | None = None) -> list[Record]:
    """Measure each commit in order against the best at that moment; the caller holds the lock.

    With no best yet the first commit is the branch's baseline (the branch stays on it
    whatever its result); each later one is an attempt, kept or reset by experiment.finish.
    """
    git, notebook = ws.git, ws.notebook
    ref = branch_ref(branch)
    records: list[Record] = []
    for sha in chain:
        tip = git.ref_target(ref)
        if tip is None:
            git.update_ref(ref, sha, None, f"gitar: measure {sha[:7]}")
            ledger.branch_set(git, branch, sha)
        elif tip != sha:
            # Where `git commit` would have put the branch: the attempt is the tip while it runs.
            move_branch(git, branch, tip, sha, f"gitar: measure {sha[:7]}")
        message = git.commit(sha).message
        if best is None:
            plan = experiment.plan_rerun(ws, sha, branch)
        else:
            plan = replace(experiment.plan_attempt(ws, sha, branch, subject(message)), best=best)
        # A pushed commit never met the commit-msg hook: one whose message breaks the rules is not run.
        rejected = reject_unfit(ws, plan, message) if plan.kind == "attempt" else None
        record = rejected or experiment.execute(ws, plan)
        records.append(record)
        if record.status == KEEP:
            best = current_best(notebook, branch, sha)
        if after_each is not None:
            after_each(record)
    return records
