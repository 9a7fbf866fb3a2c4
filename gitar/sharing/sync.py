"""Sharing one lab notebook between clones: fetch, merge and push records without losing one.

Many agents and runners write records into their own clone's refs/notes/gitar; `gitar sync`
makes every clone and the shared remote hold the union of them all. The rules:
- the remote's notes are fetched into refs/notes/remotes/<remote>/gitar, never into the local
  notes ref, which a forced fetch would silently overwrite;
- they are merged with `git notes merge -s cat_sort_uniq` (a record is one JSON line, so the
  union of two notes is their sorted unique lines); the merge runs on a scratch ref and lands
  on refs/notes/gitar with compare-and-swap, because `git notes merge` itself moves the ref
  without one and would drop a record an experiment appends meanwhile;
- the push carries a lease on the remote value that was merged, and any rejection (stale info,
  fetch first, non-fast-forward, cannot lock ref) starts over: fetch, merge, push, with
  jittered backoff, a bounded number of times. Local records are never rewritten, only added to.

The attempt pins (refs/gitar/attempts/<sha>) travel both ways and never conflict: one ref per
commit, pointing at that commit. They go in the same push as the notes, so the remote never has
a note whose commit it lacks. Experiment branches are fetched into refs/remotes/<remote>/; the
checked-out experiment branch is pushed with a lease, under one rule (see `plan_branch_push`).
Remote branches are never deleted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gitar import numbers
from gitar.config.schema import GROUND_FILE, ground_at
from gitar.errors import ExitCode, GitarError
from gitar.loop import trust
from gitar.loop.judge import current_best
from gitar.review import summary
from gitar.sharing import pin_sync
from gitar.store.git import Git
from gitar.store.records import CRASH, DISCARD, KEEP, TIMEOUT, Notebook, Record
from gitar.store.refs import (
    ATTEMPTS_PREFIX,
    GITAR_ROOT,
    NOTES_REF,
    SYNC_SCRATCH_PREFIX,
    branch_ref,
    tracking_branch_ref,
    tracking_notes_ref,
)

MERGE_STRATEGY = "cat_sort_uniq"
MAX_TRIES = 20
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 3.0
MERGE_CAS_TRIES = 10  # a local experiment may append a record between our merge and its landing
# Verdicts that settle a commit. aborted, rejected and undecided runs do not: the commit is measured again.
JUDGED = (KEEP, DISCARD, CRASH, TIMEOUT)

_ATTEMPTS_GLOB = f"{ATTEMPTS_PREFIX}*"
_FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "gitar", "GIT_AUTHOR_EMAIL": "gitar@localhost",
                      "GIT_COMMITTER_NAME": "gitar", "GIT_COMMITTER_EMAIL": "gitar@localhost"}

# What happened to the checked-out branch.
PUSHED, UP_TO_DATE, LEFT = "pushed", "up-to-date", "left-as-is"


def judged(records: list[Record], branch: str) -> bool:
    """Whether a commit has a verdict on the branch: measured, and not to be measured again."""
    return any(r.branch == branch and r.status in JUDGED for r in records)


@dataclass(frozen=True)
class BranchPush:
    """What to do with the checked-out experiment branch: push it (with a lease) or leave it, and why."""

    branch: str
    action: str  # PUSHED (to be pushed) | UP_TO_DATE | LEFT
    local: str | None
    lease: str | None  # the remote value the push may replace; None: the remote branch must not exist
    reason: str = ""


@dataclass
class SyncResult:
    remote: str
    tries: int = 0
    merged: bool = False  # the remote had records this clone did not
    notes_pushed: bool = False
    branch: BranchPush | None = None
    rejections: list[str] = field(default_factory=list)  # one line per rejected try
    pins: pin_sync.PinPlan | None = None  # branch bases and data pins adopted, pushed, disagreeing

    def lines(self) -> list[str]:
        out = [f"records: {'merged from ' + self.remote if self.merged else 'nothing new from ' + self.remote}"
               f"{', pushed' if self.notes_pushed else ''} ({self.tries} {'try' if self.tries == 1 else 'tries'})"]
        b = self.branch
        if b is not None:
            where = f"{self.remote}/{b.branch}"
            if b.action == PUSHED:
                out.append(f"branch: {where} now at {(b.local or '')[:7]}")
            elif b.action == UP_TO_DATE:
                out.append(f"branch: {where} up to date")
            else:
                out.append(f"branch: {b.branch} not pushed: {b.reason}")
        if self.pins is not None:
            names = [r.removeprefix(GITAR_ROOT) for r in self.pins.adopted]
            if names:
                out.append(f"bases and data pins adopted from {self.remote}: {', '.join(names)}")
            out.extend(f"warning: {line}" for line in self.pins.conflicts)
        return out


def sync(git: Git, remote: str = "origin", *, push: bool = True, tries: int = MAX_TRIES,
         sleep: Callable[[float], None] = time.sleep) -> SyncResult:
    """Fetch and merge the remote's records; then push ours, starting over on every rejection."""
    if tries < 1:
        raise GitarError(f"tries must be at least 1, got {tries}")
    check_remote(git, remote)
    result = SyncResult(remote=remote)
    prefix = _branch_prefix(git)
    for n in range(1, tries + 1):
        result.tries = n
        # A retry skips the attempt pins (they never conflict; the next sync brings them): a short
        # fetch-to-push window is what wins a contended push. Branches are fetched again: the
        # branch's lease may be what was rejected.
        remote_notes = fetch(git, remote, prefix, pins=n == 1)
        result.merged = merge_notes(git, remote) or result.merged
        result.pins = pin_sync.reconcile(git, remote)
        if not push:
            return result
        plan = plan_branch_push(git, remote, prefix)
        rejected = _push(git, remote, remote_notes, plan, result, pin_sync.push_args(result.pins))
        if not rejected:
            result.branch = plan
            git.run("maintenance", "run", "--auto", "--quiet", check=False)
            return result
        result.rejections.append(rejected)
        if n < tries:
            sleep(backoff_s(n))
    raise GitarError(f"{remote} rejected the push {tries} times (last: {result.rejections[-1]}); every record "
                     "is safe in this clone: run `gitar sync` again later", ExitCode.INTERNAL)


def backoff_s(attempt: int) -> float:
    """Exponential, capped, with full jitter: two clones that collided do not collide again in step."""
    return random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 10)))


def check_remote(git: Git, remote: str) -> None:
    if git.run("remote", "get-url", remote, check=False).returncode != 0:
        raise GitarError(f"no remote named {remote!r} in this clone; list them with `git remote -v` "
                         f"or add one with `git remote add {remote} URL`")


def _branch_prefix(git: Git) -> str | None:
    """The experiment branch prefix of the checked-out commit's ground.json (None: not a workspace).

    Not workspace.standing: a runner's fresh clone is often on a detached HEAD, and its sync
    still fetches the experiment branches that HEAD's policy names.
    """
    if git.head_is_unborn():
        return None
    head = git.resolve("HEAD")
    if git.blob_at(head, GROUND_FILE) is None:
        return None
    try:
        return ground_at(git, head).experiment.branch_prefix
    except GitarError:  # records still sync; only the branch needs the policy
        return None


def fetch(git: Git, remote: str, prefix: str | None, *, pins: bool = True) -> str | None:
    """Bring the remote's notes, attempt pins and experiment branches; returns its notes value."""
    # Forced only into tracking refs, which mirror the remote; the attempt pins are not forced:
    # a pin never moves, so a differing one would be damage, and damage must not spread.
    specs = [f"{_ATTEMPTS_GLOB}:{_ATTEMPTS_GLOB}"] if pins else []
    specs += pin_sync.fetch_specs(remote)
    if prefix:
        specs.append(f"+{branch_ref(prefix)}*:{tracking_branch_ref(remote, prefix)}*")
    tracking = tracking_notes_ref(remote)
    proc = _fetch(git, remote, [f"+{NOTES_REF}:{tracking}", *specs])
    if proc is None:  # the remote has no records yet
        git.delete_ref(tracking)
        if specs and _fetch(git, remote, specs) is None:
            raise GitarError(f"git fetch {remote} failed: couldn't find a remote ref", ExitCode.INTERNAL)
        return None
    return git.ref_target(tracking)


def _fetch(git: Git, remote: str, specs: list[str]) -> str | None:
    """Run one fetch; None if the remote lacks a ref named without a glob (its notes)."""
    # No auto-maintenance here: a gc inside the fetch-to-push window would lose the race to any
    # other writer; sync runs it once the push is done.
    proc = git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-maintenance",
                   remote, *specs, check=False)
    if proc.returncode == 0:
        return "ok"
    if "couldn't find remote ref" in proc.stderr:
        return None
    reason = next((ln.strip() for ln in proc.stderr.splitlines() if ln.startswith(("fatal:", "error:"))),
                  proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}")
    raise GitarError(f"git fetch {remote} failed: {reason}; check the remote's URL and your access "
                     "(`git fetch` by hand shows the details)", ExitCode.INTERNAL)


def merge_notes(git: Git, remote: str) -> bool:
    """Merge the fetched remote notes into refs/notes/gitar; True if that added anything."""
    theirs = git.ref_target(tracking_notes_ref(remote))
    if theirs is None:
        return False
    # A notebook rewound or deleted here must not be merged over: the ledger would then
    # descend from the damage and the next check would no longer see it.
    problem = trust.notes_problem(git)
    if problem is not None:
        raise GitarError(problem)
    for _ in range(MERGE_CAS_TRIES):
        ours = git.ref_target(NOTES_REF)
        if ours is not None and git.is_ancestor(theirs, ours):
            return False
        merged = _merge_on_scratch_ref(git, ours, theirs)
        try:
            git.update_ref(NOTES_REF, merged, ours, f"gitar sync: merge records from {remote}")
        except GitarError:
            continue  # a record was appended meanwhile: merge again on top of it
        # Not written here: the remote's records join the ledger as synced, with their origin.
        trust.record_synced(git, ours, merged, remote)
        summary.refresh(git)  # the one-line view in git's own tools (derived here, never synced)
        return True
    raise GitarError(f"{NOTES_REF} kept moving while merging the records from {remote}; "
                     "run `gitar sync` again once the running experiment has recorded", ExitCode.INTERNAL)


def _merge_on_scratch_ref(git: Git, ours: str | None, theirs: str) -> str:
    with git.scratch_ref(SYNC_SCRATCH_PREFIX) as scratch:
        if ours is not None:
            git.pin(scratch, ours, "gitar sync: scratch")
        args = ("notes", f"--ref={scratch}", "merge", "--quiet", "-s", MERGE_STRATEGY, theirs)
        proc = git.run(*args, check=False)
        if proc.returncode != 0 and "identity" in proc.stderr + proc.stdout:
            # A notes merge is a commit: on a runner without user.name/email, sign it as gitar.
            proc = git.run(*args, check=False, env=_FALLBACK_IDENTITY)
        if proc.returncode != 0:
            git.run(*args)  # raises, with git's reason
        merged = git.ref_target(scratch)
        if merged is None:
            raise GitarError(f"git notes merge left no result on {scratch}", ExitCode.INTERNAL)
        return merged


def plan_branch_push(git: Git, remote: str, prefix: str | None) -> BranchPush | None:
    """Whether the checked-out experiment branch replaces the remote one.

    The rule, safe first: a tip that was measured and not kept is never pushed (the branch
    is about to go back to the best). A fast-forward is pushed. A push that would take commits off the
    remote branch (a discard moves a branch back) happens only if every such commit has a
    verdict here (its code stays under refs/gitar/attempts/, its record in the notes) and the
    remote tip is not a better kept commit than ours. Otherwise the remote branch wins and is
    left as it is: it holds work nobody has measured yet, or a better result.
    """
    branch = git.current_branch()
    if branch is None or prefix is None or not branch.startswith(prefix):
        return None
    local = git.ref_target(branch_ref(branch))
    theirs = git.ref_target(tracking_branch_ref(remote, branch))
    if local == theirs:
        return BranchPush(branch, UP_TO_DATE, local, theirs)
    if local is None:
        return BranchPush(branch, LEFT, local, theirs, "no local branch")
    notebook = Notebook(git)
    mine = [r for r in notebook.records(local) if r.branch == branch]
    if judged(mine, branch) and not any(r.status == KEEP for r in mine):
        # A measured, not kept tip is on its way back to the best; pushing it would undo a reset.
        return BranchPush(branch, LEFT, local, theirs, f"its tip {local[:7]} was measured and not kept")
    if theirs is None or git.is_ancestor(theirs, local):
        return BranchPush(branch, PUSHED, local, theirs)
    dropped = [c for c in git.out("rev-list", f"{local}..{theirs}").split() if c]
    unmeasured = [c for c in dropped if not judged(notebook.records(c), branch)]
    if unmeasured:
        return BranchPush(branch, LEFT, local, theirs,
                          f"{remote}/{branch} has {len(unmeasured)} commit(s) not measured yet "
                          f"(newest {unmeasured[0][:7]}); the runner measures them")
    ours_best = current_best(notebook, branch, local)
    their_best = current_best(notebook, branch, theirs)
    if their_best is not None and (ours_best is None or their_best.val_bpb < ours_best.val_bpb):
        return BranchPush(branch, LEFT, local, theirs,
                          f"{remote}/{branch} ({theirs[:7]}, val_bpb {numbers.bpb(their_best.val_bpb)}) is a better "
                          "kept commit than this clone's")
    return BranchPush(branch, PUSHED, local, theirs)


def _push(git: Git, remote: str, remote_notes: str | None, plan: BranchPush | None,
          result: SyncResult, base_pins: list[str]) -> str:
    """One push of pins, bases, notes and branch; '' if nothing was rejected, else the first rejection."""
    ours = git.ref_target(NOTES_REF)
    args = ["push", "--porcelain", remote, f"{_ATTEMPTS_GLOB}:{_ATTEMPTS_GLOB}", *base_pins]
    if ours is not None and ours != remote_notes:
        args += [f"--force-with-lease={NOTES_REF}:{remote_notes or ''}", f"{NOTES_REF}:{NOTES_REF}"]
    if plan is not None and plan.action == PUSHED and plan.local is not None:
        ref = branch_ref(plan.branch)
        args += [f"--force-with-lease={ref}:{plan.lease or ''}", f"{plan.local}:{ref}"]
    proc = git.run(*args, check=False)
    refs = _porcelain(proc.stdout)
    rejected = [f"{dst} {summary}" for dst, (flag, summary) in refs.items() if flag == "!"]
    if rejected:
        # The porcelain line may say only "failed to update ref"; the remote's stderr says why.
        why = next((ln.removeprefix("remote:").strip() for ln in proc.stderr.splitlines()
                    if "error:" in ln and "failed to push" not in ln), "")
        return f"{rejected[0]}{': ' + why if why else ''}"
    if proc.returncode != 0:
        reason = next((ln for ln in proc.stderr.splitlines() if ln.startswith(("fatal:", "error:"))),
                      f"exit code {proc.returncode}")
        if "lock" in reason:
            return reason  # a transient lock on either side: worth another try
        raise GitarError(f"git push {remote} failed: {reason}; check the remote's URL and your push access",
                         ExitCode.INTERNAL)
    if ours is not None and NOTES_REF in refs:
        result.notes_pushed = refs[NOTES_REF][0] != "="
        git.pin(tracking_notes_ref(remote), ours, "gitar sync: pushed")
    if plan is not None and plan.action == PUSHED and plan.local is not None:
        git.pin(tracking_branch_ref(remote, plan.branch), plan.local, "gitar sync: pushed")
    return ""


def _porcelain(out: str) -> dict[str, tuple[str, str]]:
    """{destination ref: (flag, summary)} from `git push --porcelain`."""
    refs: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[0]) == 1 and ":" in parts[1]:
            refs[parts[1].split(":", 1)[1]] = (parts[0], parts[2])
    return refs
