"""What every command prints the same way: a result line or JSON, and the line on an interrupt.

Everything printed here may hold text from a record, a commit or a log, so it leaves
through gitar/text.py: lines through safe(), JSON through json_line().
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import typer

from gitar.errors import ExitCode, GitarError
from gitar.text import json_line, safe


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a run: one line saying what became of it, exit 130 (printed by cli.main,

    as JSON with --json)."""
    try:
        yield
    except KeyboardInterrupt:
        raise GitarError("interrupted; any run under way was stopped and recorded as aborted "
                         "(`gitar log` shows it)", ExitCode.INTERRUPTED) from None


def say(lines: str | Iterable[str], err: bool = False) -> None:
    """Print each line escaped (safe()): a line break inside one is shown as \\n, never obeyed. One write."""
    items = [lines] if isinstance(lines, str) else list(lines)
    if items:
        typer.echo("\n".join(map(safe, items)), err=err)


def emit_lines(data: Mapping[str, object], lines: list[str], as_json: bool) -> None:
    """A report: its JSON, or its lines for a person."""
    if as_json:
        typer.echo(json_line(data))
    else:
        say(lines)


def emit(record_line: str, data: Mapping[str, object] | None, as_json: bool,
         code: ExitCode | None = None) -> None:
    """A result: its line, or its JSON; with `code`, the JSON also carries the exit code and the line

    (`exit_code`, `message`), as every outcome of try/run/wait does, refusals included (cli.main).
    """
    if as_json and data is not None:
        if code is not None:
            data = {**data, "exit_code": int(code), "message": record_line}
        typer.echo(json_line(data))
    else:
        say(record_line)
