"""`gitar show REV`: one experiment in full — its records, its diff against its parent, its log's last lines.

REV may be a discarded attempt that no branch reaches: its pin under
refs/gitar/attempts/ keeps the commit, and a short sha of it resolves as usual.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitar.loop.result_line import result_line
from gitar.loop.workspace import open_workspace
from gitar.store.git import Git
from gitar.store.records import Lesson, Record, record_dict

DEFAULT_LOG_LINES = 20


@dataclass(frozen=True)
class Shown:
    commit: str
    parent: str | None
    message: str
    records: list[Record]
    lessons: list[Lesson]
    diff: str
    log: str | None  # the log file of the latest run
    log_tail: list[str] = field(default_factory=list)
    log_missing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "parent": self.parent, "message": self.message,
                "records": [record_dict(r) for r in self.records],
                "lessons": [{"lesson": x.lesson, "branch": x.branch, "time": x.time} for x in self.lessons],
                "diff": self.diff, "log": self.log, "log_tail": self.log_tail}


def show_commit(rev: str, log_lines: int = DEFAULT_LOG_LINES, start: str | Path = ".") -> Shown:
    ws = open_workspace(start, need_experiment_branch=False)
    sha = ws.git.resolve(rev)
    commit = ws.git.commit(sha)
    parent = str(commit.parent_ids[0]) if commit.parent_ids else None
    records, lessons = ws.notebook.entry(sha)
    records.sort(key=lambda r: (r.started or r.ended or "", r.run_id))
    log = next((r.log for r in reversed(records) if r.log), None)
    tail, missing = _tail(log, log_lines)
    return Shown(commit=sha, parent=parent, message=commit.message.strip(), records=records, lessons=lessons,
                 diff=_diff(ws.git, parent, sha), log=log, log_tail=tail, log_missing=missing)


def _diff(git: Git, parent: str | None, sha: str) -> str:
    # No pager, no colour: git sees no terminal here. --no-ext-diff: a user's difftool must not run.
    if parent is None:
        return git.run("show", "--no-color", "--no-ext-diff", "--format=", "--stat", "--patch", sha).stdout.rstrip()
    return git.run("diff", "--no-color", "--no-ext-diff", "--stat", "--patch", parent, sha).stdout.rstrip()


def _tail(log: str | None, n: int) -> tuple[list[str], bool]:
    if log is None or n <= 0:
        return [], False
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            # The log may be long (one line per step): keep only the last n while reading.
            return [line.rstrip("\n") for line in deque(f, maxlen=n)], False
    except OSError:
        return [], True


def shown_lines(s: Shown) -> list[str]:
    lines = [f"commit {s.commit}"]
    # Split at newlines only: any other line break (U+2028, \x1c…) is shown escaped in its line.
    lines += [f"    {line}" for line in s.message.split("\n")]
    if not s.records:
        lines.append("no gitar record: this commit was never run as an experiment")
    hypotheses = sorted({r.hypothesis for r in s.records if r.hypothesis})
    lines += [f"hypothesis: {h}" for h in hypotheses]
    for r in s.records:
        lines.append(f"{r.kind} on {r.branch}: {result_line(r)}")
    lines += [f"lesson: {x.lesson}" for x in s.lessons]
    lines.append("")
    lines.append(f"diff against {s.parent[:7]}:" if s.parent else "diff (root commit):")
    lines += s.diff.split("\n") if s.diff else ["(no changes)"]
    if s.log is not None:
        lines.append("")
        if s.log_missing:
            lines.append(f"log {s.log}: not on this machine (logs stay where the run happened)")
        else:
            lines.append(f"log (last {len(s.log_tail)} lines of {s.log}):")
            # Indented like the message: what train.py printed can never pass for a line of gitar's.
            lines += [f"    {line}" for line in s.log_tail]
    return lines
