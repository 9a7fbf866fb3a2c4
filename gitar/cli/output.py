"""What every command prints the same way: a result line or JSON, and the line on an interrupt."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import typer

from gitar.errors import ExitCode


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a run: one line saying what became of it, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("gitar: interrupted; any run under way was stopped and recorded as aborted "
                   "(`gitar log` shows it)", err=True)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def emit_lines(data: Mapping[str, object], lines: list[str], as_json: bool) -> None:
    """A report: its JSON, or its lines for a person."""
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False))
    else:
        for line in lines:
            typer.echo(line)


def emit(record_line: str, data: Mapping[str, object] | None, as_json: bool) -> None:
    if as_json and data is not None:
        typer.echo(json.dumps(data, ensure_ascii=False))
    else:
        typer.echo(record_line)
