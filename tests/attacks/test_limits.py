"""Resource attacks: memory without bound, forks without bound, a flooded log.

Each is capped in the trainer itself (CAP_MB, FORKS, LOG_MB) so that a referee without limits
does not take the shared machine down; the assertions say gitar bounded it lower and ended the
run cleanly: a record that is not a keep, with its cause, and nothing of the run left running.

The workspace sets ground.json experiment.limits (conftest.LIMITS: 1 GiB, 256 processes, 16 MB
of log) when the gitar under test accepts the key; otherwise these run against whatever bounds
that gitar has.
"""

from __future__ import annotations

import re

import pytest

from testing.arena import Arena, assert_not_a_win, assert_stopped_with_cause, survivors, trainer

pytestmark = pytest.mark.attack

CAP_MB = 4096  # the memory attack stops here by itself: four times the test's limit
FORKS = 2000  # sleeping children at most: far more than the test's process limit
LOG_MB = 1536  # the flood, in MiB; lower it (to ~200) if disk or time is short
KEPT_LOG_MAX_MB = LOG_MB // 4  # a bounded log keeps much less than the flood


def test_memory_without_bound_is_stopped(arena: Arena) -> None:
    outcome = arena.attempt(trainer("memory_hog", CAP_MB=CAP_MB), "allocate everything")
    reached = [int(m) for m in re.findall(r"attack: allocated (\d+) MiB", outcome.log_text())]
    peak = max(reached, default=0)
    assert peak < CAP_MB, f"allocated {peak} MiB unhindered; {outcome.describe()}"
    assert_stopped_with_cause(outcome)


def test_forks_without_bound_are_stopped(arena: Arena) -> None:
    outcome = arena.attempt(trainer("fork_flood", MARKER=arena.marker, FORKS=FORKS), "fork a lot")
    alive = survivors(arena.marker)
    unhindered = "children unhindered" in outcome.log_text()
    assert not unhindered and not alive, f"forked {FORKS} unhindered: {unhindered}; alive: {len(alive)}; " \
                                         f"{outcome.describe()}"
    assert_stopped_with_cause(outcome)


def test_a_flooded_log_is_kept_bounded(arena: Arena) -> None:
    outcome = arena.attempt(trainer("log_flood", LOG_MB=LOG_MB), "say a lot")
    log = outcome.log
    assert log is not None, outcome.describe()
    kept_mb = log.stat().st_size / (1 << 20) if log.is_file() else 0.0
    logs_mb = sum(p.stat().st_size for p in log.parent.glob("*") if p.is_file()) / (1 << 20)
    assert kept_mb < KEPT_LOG_MAX_MB and logs_mb < KEPT_LOG_MAX_MB, (
        f"kept a {kept_mb:.0f} MiB log ({logs_mb:.0f} MiB of logs) of a {LOG_MB} MiB flood; {outcome.describe()}")
    assert outcome.record is not None and outcome.record.get("reason"), outcome.describe()
    assert_not_a_win(outcome, arena.honest)
