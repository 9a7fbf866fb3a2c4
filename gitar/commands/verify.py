"""`gitar verify [--branch B] [--require-signed] [--accept] [--rerun N]`: re-check a branch's kept records.

The runner already refuses to measure a commit whose harness differs from the base's;
verify checks afterwards that what the notebook says still holds, for each kept record
of the branch (the baseline, kept attempts, re-measurements of the best):

- the harness hash it records is the harness of the branch's base (refs/gitar/base/B);
- the commit's prepare.py and ground.json still hash to what it records;
- its val_bpb came from gitar's harness evaluation (val_bpb_source "harness"), not from
  the number train.py printed ("reported", or a record without the field);
- its evaluation data hash is the branch's data pin, where this clone has one;
- it was measured inside the sandbox (a `sandbox` field, not missing and not "off").

And that the notebook is gitar's (gitar/store/ledger.py, gitar/loop/trust.py): refs/notes/gitar and
the branch are where gitar left them, and every run a kept commit's value averages was
written by gitar here, synced by `gitar sync`, accepted by hand, or signed by a runner
ground.json trusts (experiment.runner_keys). A record that is none of these was written
outside gitar. A signature that does not verify, or one by a key ground.json does not list,
is a problem; with --require-signed so is every unsigned run.

--accept records the current notes tip, the records gitar did not write and the branch's
tip in the ledger, printing each, then verifies. It is how a person resolves a refusal.

--rerun N re-measures the N best kept commits (by their recorded mean) with the normal
measurement path (experiment.plan_rerun/execute), never moving the branch. Each run is
recorded (kind "verify") and never counted: the best's mean, the noise and the bar later
attempts must beat stay what they were. A run that differs from the recorded mean by more
than k standard deviations of the difference, σ·√(1 + 1/m) for a mean of m runs (σ the
branch's noise, never below experiment.noise_floor; k = experiment.margin_k), is a problem.

One line per problem, then a summary line (reruns add one line each before it). Exit 0
when clean, 1 when any problem was found, 2 when the branch cannot be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gitar.config.schema import ground_at
from gitar.errors import GitarError
from gitar.loop import eval_data, experiment, integrity, trust
from gitar.loop.judge import sigma_of
from gitar.loop.opened import Opened
from gitar.review.noise import branch_noise
from gitar.store import pins, signing
from gitar.store.git import Git
from gitar.store.ledger import ACCEPTED, SYNCED, Ledger
from gitar.store.records import KEEP, VERIFY, Record
from gitar.store.refs import HEADS_PREFIX, base_ref, branch_ref


@dataclass(frozen=True)
class Problem:
    commit: str  # "" for a problem of the whole notebook or branch
    run_id: str
    what: str

    def line(self) -> str:
        if not self.commit:
            return self.what
        return f"{self.commit[:7]} (run {self.run_id[:8]}): {self.what}"


@dataclass(frozen=True)
class Rerun:
    commit: str
    recorded: float  # the recorded mean the branch judged with
    runs: int
    record: Record  # the verify run
    sigmas: float | None  # (measured − recorded) / σ√(1 + 1/runs); None if it did not measure
    k: float

    @property
    def reproduces(self) -> bool:
        return self.sigmas is not None and abs(self.sigmas) <= self.k


@dataclass(frozen=True)
class Verification:
    branch: str
    base: str
    checked: int  # kept records examined
    problems: list[Problem] = field(default_factory=list)
    trust: dict[str, int] = field(default_factory=dict)  # how the counted runs are vouched for
    reruns: list[Rerun] = field(default_factory=list)
    rerun_lines: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def verify_branch(branch: str | None = None, start: str | Path = ".", *, require_signed: bool = False,
                  accept: bool = False, rerun: int = 0) -> Verification:
    git = Git.discover(start)
    name = (branch or git.current_branch() or "").removeprefix(HEADS_PREFIX)
    if not name:
        raise GitarError("HEAD is detached; name the branch to verify with --branch B")
    if git.ref_target(branch_ref(name)) is None:
        raise GitarError(f"no branch {name}; name an experiment branch with --branch (see `git branch`)")
    base = pins.base_commit(git, name)
    if base is None:
        raise GitarError(f"{name} has no recorded base ({base_ref(name)}); run `gitar init TAG` "
                         "on the branch to record one, then verify again")
    if rerun < 0:
        raise GitarError(f"--rerun must be at least 1, got {rerun}")
    accepted = trust.accept(git, name) if accept else []
    expected = integrity.harness_sha256(git, base)
    pin = pins.load_data_pin(git, name)
    data = eval_data.data_digest(pin) if pin is not None else None
    lines = [ln for ln in trust.all_lines(git) if ln.record.branch == name]
    kept_commits = {ln.commit for ln in lines if ln.record.status == KEEP and ln.record.kind != VERIFY}
    kept = sorted((ln for ln in lines if ln.record.status == KEEP and ln.record.kind != VERIFY),
                  key=lambda ln: (ln.record.started or "", ln.record.commit, ln.record.run_id))
    problems = [Problem("", "", p) for p in (trust.notes_problem(git),
                                             trust.branch_problem(git, name, git.ref_target(branch_ref(name))))
                if p is not None]
    problems += [Problem(e.commit, e.run_id, f"a record {_origin_words(e.origin)} is gone from the notes: "
                                             "removed or edited outside gitar")
                 for e in trust.vanished(git)]
    problems += [p for ln in kept for p in _check(git, ln.record, expected, base, data)]
    # Every run a kept commit's value averages (kept runs, re-runs, confirm runs): who vouches for it.
    counted = [ln for ln in lines if ln.commit in kept_commits and ln.record.ok]
    counts, trust_problems = _vouch(git, name, counted, require_signed)
    problems += trust_problems
    v = Verification(branch=name, base=base, checked=len(kept), problems=problems, trust=counts, accepted=accepted)
    if rerun:
        _rerun(git, name, base, rerun, v)
    return v


def _origin_words(origin: str) -> str:
    if origin.startswith(SYNCED):
        return f"synced from {origin.partition(':')[2] or 'a remote'}"
    return "accepted by hand" if origin == ACCEPTED else "gitar wrote here"


def _check(git: Git, record: Record, expected: str, base: str, data: str | None) -> list[Problem]:
    found: list[str] = []
    if record.harness_sha256 is None:
        found.append("records no harness hash")
    elif record.harness_sha256 != expected:
        found.append(f"was measured by another harness than the base {base[:7]}'s "
                     f"(recorded {record.harness_sha256[:12]}, base {expected[:12]})")
    try:
        actual = integrity.harness_sha256(git, record.commit)
    except GitarError:
        found.append("its commit is missing from this repository")
    else:
        if record.harness_sha256 is not None and actual != record.harness_sha256:
            found.append(f"its commit's prepare.py/ground.json hash to {actual[:12]}, "
                         f"not the {record.harness_sha256[:12]} it records")
    if record.val_bpb_source != integrity.HARNESS:
        source = record.val_bpb_source or "not recorded"
        found.append(f"val_bpb was not measured by the harness evaluator (source: {source})")
    if data is not None and record.data_sha256 is not None and record.data_sha256 != data:
        found.append(f"was evaluated on other data than the branch's pin "
                     f"(recorded {record.data_sha256[:12]}, pin {data[:12]})")
    elif data is not None and record.data_sha256 is None and record.val_bpb_source == integrity.HARNESS:
        found.append("records no evaluation data hash")
    if record.sandbox is None:
        found.append("records no sandbox: train.py ran unconfined (it could write .git and gitar's files)")
    elif record.sandbox == "off":
        found.append("was measured with the sandbox off (sandbox: off)")
    return [Problem(record.commit, record.run_id, what) for what in found]


def _vouch(git: Git, branch: str, counted: list[trust.Line],
           require_signed: bool) -> tuple[dict[str, int], list[Problem]]:
    """Who vouches for each counted run: the ledger (here / synced / accepted) and a runner signature."""
    entries = Ledger.of(git).entries() if counted else {}
    keys = trust.runner_keys(git, branch) if counted else ()
    counts: dict[str, int] = {}
    problems: list[Problem] = []
    for ln in counted:
        entry = entries.get(ln.sha256)
        state, kid = signing.check(ln.data(), keys)
        origin = "unknown" if entry is None else _origin_words(entry.origin).replace("gitar wrote here", "written here")
        label = "signed by a trusted runner" if state == signing.TRUSTED else \
            origin + (" (unsigned)" if origin.startswith("synced") else "")
        counts[label] = counts.get(label, 0) + 1
        r = ln.record
        also = ", and gitar did not write or sync it" if entry is None else ""
        if state == signing.BAD:
            problems.append(Problem(r.commit, r.run_id, f"its runner signature (key {kid or '?'}) does not verify: "
                                                        f"the record was changed after it was signed{also}"))
        elif state == signing.UNTRUSTED:
            problems.append(Problem(r.commit, r.run_id, f"signed by key {kid}, which is not a trusted runner "
                                                        f"(ground.json experiment.runner_keys){also}"))
        elif entry is None and state != signing.TRUSTED:
            problems.append(Problem(r.commit, r.run_id, "written outside gitar: not in the ledger (not written "
                                                        "here, not synced) and not signed by a trusted runner"))
        elif require_signed and state == signing.UNSIGNED:
            problems.append(Problem(r.commit, r.run_id, f"not signed by a trusted runner ({origin}; --require-signed)"))
    return counts, problems


def _rerun(git: Git, branch: str, base: str, n: int, v: Verification) -> None:
    """Re-measure the n best kept commits; record each run (kind verify), never counted, never moving the branch."""
    ws = Opened.of(git)
    notebook = ws.notebook
    ground = ground_at(git, base)
    means: list[tuple[float, str, int]] = []
    for commit, records in notebook.all():
        values = [r.val_bpb for r in records if r.branch == branch and r.ok and r.val_bpb is not None]
        if values and any(r.status == KEEP and r.branch == branch and r.kind != VERIFY for r in records):
            means.append((math.fsum(values) / len(values), commit, len(values)))
    sigma = sigma_of(branch_noise(notebook, branch), ground.experiment.noise_floor)
    k = ground.experiment.margin_k
    with ws.lock(purpose="verify", commit=base):
        for mean, commit, runs in sorted(means)[:n]:
            try:
                plan = experiment.plan_rerun(ws, commit, branch, verify=True)
            except GitarError as e:
                v.problems.append(Problem(commit, "-", f"cannot be re-measured: {e.message}"))
                continue
            record = experiment.execute(ws, plan)
            measured = record.val_bpb if record.status == KEEP else None
            spread = sigma.value * math.sqrt(1 + 1 / runs)
            z = (measured - mean) / spread if measured is not None and spread > 0 else None
            result = Rerun(commit, mean, runs, record, z, k)
            v.reruns.append(result)
            said = (f"re-measured {measured:.6f} against the recorded mean {mean:.6f} of {runs} run"
                    f"{'s' if runs != 1 else ''}: {z:+.1f}σ" if measured is not None and z is not None else "")
            if result.reproduces:
                v.rerun_lines.append(f"{commit[:7]} (run {record.run_id[:8]}): {said}, reproduces within {k:g}σ "
                                     f"(σ {sigma.value:.6f})")
            elif measured is not None:
                v.problems.append(Problem(commit, record.run_id, f"does not reproduce: {said}, beyond {k:g}σ "
                                                                 f"(σ {sigma.value:.6f}, experiment.margin_k {k:g})"))
            else:
                why = record.reason or (record.error or {}).get("message") or "no number"
                v.problems.append(Problem(commit, record.run_id, f"re-measurement ended {record.status}: {why}"))


def verification_lines(v: Verification) -> list[str]:
    lines = [*v.accepted, *v.rerun_lines, *(p.line() for p in v.problems)]
    what = f"{v.checked} kept record{'s' if v.checked != 1 else ''} of {v.branch} against its base {v.base[:7]}"
    verdict = "clean" if v.clean else f"{len(v.problems)} problem{'s' if len(v.problems) != 1 else ''}"
    vouched = ", ".join(f"{n} {label}" for label, n in sorted(v.trust.items()))
    reran = ""
    if v.reruns:
        ok = sum(1 for r in v.reruns if r.reproduces)
        reran = f"; re-measured {len(v.reruns)}: {ok} reproduce{'s' if ok == 1 else ''}"
    lines.append(f"verified {what}: {verdict}" + (f" (runs: {vouched})" if vouched else "") + reran)
    return lines
