"""How records read to an agent and a person: the one-line result and the exit code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitar.errors import ExitCode
from gitar.numbers import bpb, delta, per_second, signed
from gitar.review.flags import noise_flag, throughput_flag
from gitar.store.branch import KEPT_EDITS, MOVED_ELSEWHERE, PENDING
from gitar.store.records import KEEP, Record


def exit_code(record: Record) -> ExitCode:
    return ExitCode.OK if record.status == KEEP else ExitCode.NOT_KEPT


def _first_line(text: str, limit: int = 72) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def repeat_phrase(repeat: Mapping[str, Any], branch: str | None = None) -> str | None:
    """e.g. `repeat of 9f8e7d6 (discard, val_bpb 0.998000)`: a record's repeat_of, as a phrase.

    The dict comes from a note, which anyone can edit: a field of the wrong type is left out,
    and without a commit there is no phrase.
    """
    commit, status, value = repeat.get("commit"), repeat.get("status"), repeat.get("val_bpb")
    if not isinstance(commit, str) or not commit:
        return None
    facts = [status[:20] if isinstance(status, str) and status else "?"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        facts.append(f"val_bpb {bpb(value)}")
    times = repeat.get("times")
    if isinstance(times, int) and not isinstance(times, bool) and times > 1:
        facts.append(f"{times} earlier attempts with these files")
    where = repeat.get("branch")
    on = f" on {where}" if isinstance(where, str) and where and where != branch else ""
    return f"repeat of {commit[:7]} ({', '.join(facts)}){on}"


REMEASURED = "remeasured"  # the result line's word for another run of the best (`gitar run` on it)

def flags(record: Record) -> list[str]:
    """What a reader should doubt about this run's number (display only; the verdict stands)."""
    change = delta(record.val_bpb, record.best_before) if record.val_bpb is not None and \
        record.best_before is not None else None
    found = [noise_flag(record.status, record.kind, change, record.sigma),
             throughput_flag(record.tokens_per_s, record.best_tokens_per_s) if record.ok else None]
    return [f for f in found if f]


def throughput_words(record: Record) -> str:
    """e.g. "953 steps 1.23M tok/s"; for a run without a summary, the last step its log shows."""
    parts = []
    if record.num_steps is not None:
        parts.append(f"{record.num_steps} step{'' if record.num_steps == 1 else 's'}")
    elif record.last_step is not None:
        at = f"train {record.last_train_s:g}s, " if record.last_train_s is not None else ""
        parts.append(f"reached step {record.last_step} ({at}by train.py's log)")
    rate = record.tokens_per_s
    if rate is not None:
        parts.append(f"{per_second(rate)} tok/s")
    return " ".join(parts)


def result_line(record: Record) -> str:
    """e.g. `keep 1a2b3c4 val_bpb 0.997900 (-0.003100 vs best 1.001000) 300.1s "wider MLP"`.

    A re-measurement of the best is no candidate that beat it: it says `remeasured` and
    names the mean it joins (its record's status stays keep, the judge's verdict).
    """
    rerun = record.kind == "rerun" and record.status == KEEP
    parts = [REMEASURED if rerun else record.status, record.commit[:7]]
    if record.val_bpb is not None:
        parts.append(f"val_bpb {bpb(record.val_bpb)}")
        if rerun and record.best_before is not None:
            parts.append(f"(the best's mean before it: {bpb(record.best_before)})")
        elif record.best_before is not None and record.delta is not None:
            change = signed(delta(record.val_bpb, record.best_before))  # from the two numbers as printed
            parts.append(f"({change} vs best {bpb(record.best_before)})")
        elif record.kind == "baseline" or record.best_before is None:
            parts.append("(baseline)")
    elif record.error:
        err = f"{record.error.get('type', '')}: {record.error.get('message', '')}".strip(": ")
        parts.append(_first_line(err, 120) or record.reason or "")
    elif record.reason:
        parts.append(_first_line(record.reason, 120))
    if record.training_seconds is not None:
        parts.append(f"{record.training_seconds:.1f}s")
    parts.append(throughput_words(record))
    parts.append(f'"{_first_line(record.description)}"')
    line = " ".join(p for p in parts if p)
    for flag in flags(record):
        line += f"; {flag}"
    repeat = repeat_phrase(record.repeat_of, record.branch) if isinstance(record.repeat_of, dict) else None
    if repeat is not None:
        line += f"; {repeat}"
    moved = record.worktree is not None and record.worktree.startswith(MOVED_ELSEWHERE)
    if moved and record.kind == "attempt":
        # Never "branch back at": gitar did not move it, and says where it is instead.
        detail = (record.worktree or "").partition(": ")[2] or "the branch was moved by someone else"
        line += f"; branch not moved: {detail}"
        if record.best_commit and record.status != KEEP:
            line += f"; the best is {record.best_commit[:7]} (`gitar verify` checks the branch)"
    elif record.status != KEEP and record.kind == "attempt" and record.best_commit:
        line += f"; branch back at {record.best_commit[:7]}"
    if record.worktree == KEPT_EDITS:
        line += "; edits made during the run were kept in the work tree"
    elif record.worktree and record.worktree.startswith(PENDING):
        line += f"; {record.worktree}"
    if record.log and record.status not in (KEEP, "discard"):
        line += f"; log: {record.log}"
    return line
