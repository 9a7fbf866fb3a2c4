"""How much val_bpb moves between identical runs: the noise the judge has to see through.

Noise is measured by running one commit several times with different seeds (`gitar run
--repeat N`, and the re-runs of the `confirm` keep rule). A branch's noise pools every
commit it has run more than once: each run's deviation from its own commit's mean, so
commits of different quality still measure the same run-to-run spread, and confirm
re-runs of candidates keep refining the estimate at no extra cost.

Two estimates of one standard deviation are given: `std`, the pooled sample standard
deviation (what the judge uses: a run that diverged makes it larger, i.e. more careful),
and `mad`, a robust one (1.4826 × the median absolute deviation, which a few odd runs
barely move) so that a person can see when one odd run dominates `std`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gitar.store.records import Notebook, Record

# 1 / Φ⁻¹(3/4): makes the median absolute deviation of Gaussian data estimate its standard deviation.
MAD_TO_STD = 1.482602218505602


@dataclass(frozen=True)
class Spread:
    """The run-to-run spread of val_bpb over groups of repeated runs."""

    n: int  # runs pooled (only groups of two or more runs count)
    std: float  # pooled sample standard deviation
    mad: float  # robust estimate of the same standard deviation

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "std": round(self.std, 6), "mad": round(self.mad, 6)}


@dataclass(frozen=True)
class Noise:
    """The measured noise of a branch (`branch_noise`)."""

    n: int  # runs pooled
    std: float  # pooled sample standard deviation: the σ the judge uses
    mad: float  # robust estimate of the same standard deviation
    commit: str  # the commit with the most runs in the pool: usually the re-measured baseline or best
    commits: int  # how many commits were run more than once

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "std": round(self.std, 6), "mad": round(self.mad, 6)}


def pooled_spread(groups: Iterable[Sequence[float]]) -> Spread | None:
    """Pool the spread of several groups of runs; None when no group has two runs.

    std: sqrt(Σ (x − mean of its group)² / (n − groups)), the usual pooled estimate.
    mad: MAD_TO_STD × the median over all runs of |x − mean of its group| × sqrt(m / (m − 1)).
    A deviation from the mean of m runs has variance σ²(m − 1)/m, so the factor makes every
    scaled deviation exactly N(0, σ²) for Gaussian noise, whatever the group sizes, and the
    estimate agrees with std. (Deviations from each group's median would not: in a group
    of three the middle run always deviates by exactly zero.) A few odd runs move the
    median of the deviations little, and an odd run moves only its own group's deviations.
    """
    used = [list(g) for g in groups if len(g) >= 2]
    if not used:
        return None
    n = sum(len(g) for g in used)
    squares = 0.0
    deviations: list[float] = []
    for g in used:
        mean = math.fsum(g) / len(g)
        squares += math.fsum((x - mean) ** 2 for x in g)
        unshrink = math.sqrt(len(g) / (len(g) - 1))
        deviations.extend(abs(x - mean) * unshrink for x in g)
    std = math.sqrt(squares / (n - len(used)))
    mad = MAD_TO_STD * _median(deviations)
    return Spread(n=n, std=std, mad=mad)


def _median(values: list[float]) -> float:
    # statistics.median, without importing statistics (and fractions, decimal, random) on every command.
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _values(records: Iterable[Record], branch: str) -> list[float]:
    return [r.val_bpb for r in records if r.branch == branch and r.ok and r.val_bpb is not None]


def commit_spread(records: Sequence[Record], branch: str) -> Spread | None:
    """The spread of one commit's successful runs on a branch (what a repeat's record stores)."""
    return pooled_spread([_values(records, branch)])


def noise_from(entries: Iterable[tuple[str, Sequence[Record]]], branch: str) -> Noise | None:
    """The noise of a branch from (commit, records) pairs, e.g. those of Notebook.all()."""
    groups: dict[str, list[float]] = {}
    for commit, records in entries:
        if len(records) < 2:  # nearly every commit: one run, no spread to pool
            continue
        values = _values(records, branch)
        if len(values) >= 2:
            groups[commit] = values
    spread = pooled_spread(groups.values())
    if spread is None:
        return None
    main = max(groups, key=lambda c: (len(groups[c]), c))
    return Noise(n=spread.n, std=spread.std, mad=spread.mad, commit=main, commits=len(groups))


def branch_noise(notebook: Notebook, branch: str) -> Noise | None:
    """The measured noise of a branch; None until some commit has two successful runs on it."""
    return noise_from(notebook.all(), branch)
