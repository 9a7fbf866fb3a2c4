"""The branch bases and data pins, shared between clones by `gitar sync`.

An experiment branch's base (refs/gitar/base/<branch>: the commit whose prepare.py and
ground.json every experiment must keep) and its data pin (refs/gitar/data/<branch>: the
sha256 of each evaluation file) are what make one number comparable with another. A
runner clone measuring pushed commits must hold the same ones as the agent that made
the branch, or it would judge against another harness.

Both are written once and never move, so sharing them is adoption, not merging: the
remote's are fetched into refs/gitar/remotes/<remote>/…, a clone that lacks one adopts
it (create-only), and a clone pushes the ones the remote lacks (create-only, with a
lease that the remote ref does not exist). Two clones that made different bases for the
same branch name keep their own and are told; nothing is overwritten either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitar.store.git import Git
from gitar.store.refs import BASE_PREFIX, DATA_PREFIX, tracking_pin_prefix

SHARED = (BASE_PREFIX, DATA_PREFIX)
def fetch_specs(remote: str) -> list[str]:
    # Forced, like every tracking ref: it mirrors the remote, and the local refs are never forced.
    return [f"+{prefix}*:{tracking_pin_prefix(remote, prefix)}*" for prefix in SHARED]


@dataclass(frozen=True)
class PinPlan:
    adopted: list[str]  # local refs created from the remote's
    to_push: dict[str, str]  # ref -> object: ours, which the remote lacks
    conflicts: list[str]  # one line per ref the two sides disagree on


def _refs(git: Git, *patterns: str) -> dict[str, str]:
    out = git.out("for-each-ref", "--format=%(objectname) %(refname)", *patterns)
    refs: dict[str, str] = {}
    for line in out.splitlines():
        obj, _, ref = line.partition(" ")
        refs[ref] = obj
    return refs


def reconcile(git: Git, remote: str) -> PinPlan:
    """Adopt the remote's bases and pins this clone lacks; list ours the remote lacks."""
    local = _refs(git, *(p.rstrip("/") for p in SHARED))
    theirs: dict[str, str] = {}
    for prefix in SHARED:
        tracking = tracking_pin_prefix(remote, prefix)
        for ref, obj in _refs(git, tracking.rstrip("/")).items():
            theirs[prefix + ref.removeprefix(tracking)] = obj
    adopted: list[str] = []
    conflicts: list[str] = []
    for ref, obj in sorted(theirs.items()):
        mine = local.get(ref)
        if mine is None:
            # Create-only: a base made here meanwhile wins over the remote's, and is reported next time.
            if git.run("update-ref", "-m", f"gitar sync: adopt {ref} from {remote}", ref, obj, "",
                       check=False).returncode == 0:
                adopted.append(ref)
        elif mine != obj:
            what = "base" if ref.startswith(BASE_PREFIX) else "data pin"
            branch = ref.removeprefix(BASE_PREFIX).removeprefix(DATA_PREFIX)
            conflicts.append(f"{branch}: this clone's {what} ({mine[:7]}) differs from {remote}'s ({obj[:7]}); "
                             f"both kept — the branch was made twice; start a new one with `gitar init TAG`")
    to_push = {ref: obj for ref, obj in local.items() if ref not in theirs}
    return PinPlan(adopted, to_push, conflicts)


def push_args(plan: PinPlan) -> list[str]:
    """Refspecs and leases that create ours on the remote only where it still has none."""
    args: list[str] = []
    for ref, obj in sorted(plan.to_push.items()):
        args += [f"--force-with-lease={ref}:", f"{obj}:{ref}"]
    return args
