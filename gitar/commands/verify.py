"""`gitar verify [--branch B]`: re-check every kept record of a branch against the branch's base.

The runner already refuses to measure a commit whose harness differs from the base's;
verify checks afterwards that what the notebook says still holds, for each kept record
of the branch (the baseline, kept attempts, re-measurements of the best):

- the harness hash it records is the harness of the branch's base (refs/gitar/base/B);
- the commit's prepare.py and ground.json still hash to what it records;
- its val_bpb came from gitar's harness evaluation (val_bpb_source "harness"), not from
  the number train.py printed ("reported", or a record without the field);
- its evaluation data hash is the branch's data pin, where this clone has one.

One line per problem, then a summary line. Exit 0 when every kept record passes, 1 when
any problem was found, 2 when the branch cannot be checked (unknown, or no base recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gitar import integrity
from gitar.errors import GitarError
from gitar.git import Git
from gitar.records import KEEP, Notebook, Record


@dataclass(frozen=True)
class Problem:
    commit: str
    run_id: str
    what: str

    def line(self) -> str:
        return f"{self.commit[:7]} (run {self.run_id[:8]}): {self.what}"


@dataclass(frozen=True)
class Verification:
    branch: str
    base: str
    checked: int  # kept records examined
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def verify_branch(branch: str | None = None, start: str | Path = ".") -> Verification:
    git = Git.discover(start)
    name = (branch or git.current_branch() or "").removeprefix("refs/heads/")
    if not name:
        raise GitarError("HEAD is detached; name the branch to verify with --branch B")
    if git.ref_target(f"refs/heads/{name}") is None:
        raise GitarError(f"no branch {name}; name an experiment branch with --branch (see `git branch`)")
    base = integrity.base_commit(git, name)
    if base is None:
        raise GitarError(f"{name} has no recorded base ({integrity.base_ref(name)}); run `gitar init TAG` "
                         "on the branch to record one, then verify again")
    expected = integrity.harness_sha256(git, base)
    pin = integrity.load_data_pin(git, name)
    data = integrity.data_digest(pin) if pin is not None else None
    kept = sorted((r for _, records in Notebook(git).all() for r in records if r.branch == name and r.status == KEEP),
                  key=lambda r: (r.started or "", r.commit, r.run_id))
    problems = [p for r in kept for p in _check(git, r, expected, base, data)]
    return Verification(branch=name, base=base, checked=len(kept), problems=problems)


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
    return [Problem(record.commit, record.run_id, what) for what in found]


def verification_lines(v: Verification) -> list[str]:
    lines = [p.line() for p in v.problems]
    what = f"{v.checked} kept record{'s' if v.checked != 1 else ''} of {v.branch} against its base {v.base[:7]}"
    if v.clean:
        lines.append(f"verified {what}: clean")
    else:
        lines.append(f"verified {what}: {len(v.problems)} problem{'s' if len(v.problems) != 1 else ''}")
    return lines
