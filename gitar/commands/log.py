"""`gitar log [--all] [--json | --tsv]`: every attempt, from the records in git.

The table is newest first. `--tsv` writes autoresearch's results.tsv instead, oldest
first as that file grows, so its analysis notebook loads it unchanged. Its three
statuses take gitar's six as follows: keep and discard as they are; crash, timeout
and aborted (ran, produced no number) as crash with 0.000000 and 0.0; rejected
attempts never ran and are left out. An attempt measured several times is one row
with the mean of its runs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from gitar.errors import GitarError
from gitar.loop.workspace import open_workspace
from gitar.review import history
from gitar.review.history import Attempt, History
from gitar.text import json_line

TSV_HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")


def load_history(all_branches: bool, start: str | Path = ".") -> History:
    ws = open_workspace(start, need_experiment_branch=not all_branches)
    return history.load(ws.git, None if all_branches else ws.branch)


def newest_first(h: History, limit: int | None) -> list[Attempt]:
    if limit is not None and limit < 1:
        raise GitarError(f"--limit must be at least 1, got {limit}")
    attempts = h.attempts[::-1]
    return attempts if limit is None else attempts[:limit]


def table_lines(h: History, attempts: list[Attempt]) -> Iterator[str]:
    """One aligned line per attempt: sha, status, val_bpb, delta, memory, seconds, steps, tokens/s,
    description (with its flags: a throughput far from the best's, a keep within noise)."""
    if not attempts:
        where = "any branch" if h.branch is None else h.branch
        yield f"no attempts recorded on {where} yet: `gitar run` measures the baseline"
        return
    head = (f"{'commit':<7}  {'status':<8} {'val_bpb':>8}  {'delta':>9}  {'mem_gb':>6}  {'train_s':>7}  "
            f"{'steps':>6}  {'tok/s':>6}  description")
    if h.branch is not None:
        yield head
        yield from map(_row, attempts)  # 10,000 rows: the loop in C
        return
    width = max(len(a.branch) for a in attempts)
    yield f"{'branch':<{width}}  " + head
    for a in attempts:
        yield f"{a.branch:<{width}}  " + _row(a)


def _row(a: Attempt) -> str:
    return f"{a.commit[:7]}  {a.line}"


def json_lines(attempts: list[Attempt]) -> Iterator[str]:
    for a in attempts:
        yield json_line(a.as_dict())


def tsv_text(attempts: list[Attempt]) -> str:
    """results.tsv: header, then one row per attempt that ran, oldest first."""
    out = io.StringIO()
    # QUOTE_MINIMAL quotes only a description holding a double quote, which pandas reads back as written.
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(TSV_HEADER)
    # One call: 10,000 rows (each row's fields computed once per note: Attempt.tsv, history.tsv_fields).
    writer.writerows([(a.commit[:7], *fields) for a in attempts if (fields := a.tsv) is not None])
    return out.getvalue()
