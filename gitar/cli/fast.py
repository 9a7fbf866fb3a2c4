"""The review commands an agent runs before every idea, without loading typer.

`gitar log`, `best` and `memory` on 10,000 attempts are meant to stay within 3× the time git
takes to print the same notes (benchmarks/bench_review.py); importing typer and click is a
fifth of that. So cli.main runs the plainest forms of these three here — exactly the
arguments in FLAGS and VALUES, each value a plain decimal integer — and hands everything
else (`--help`, `--limit=5`, `-n5`, a misspelt or unknown option, any other command) to the
typer app, which parses it as before. The bodies below are the commands themselves: the
typer commands in cli/review.py call them too, so both paths print the same bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from gitar.errors import GitarError
from gitar.text import json_line, safe

# command -> {flag: keyword}, {option taking an integer: keyword}
FLAGS: dict[str, dict[str, str]] = {
    "log": {"--all": "all_branches", "--json": "as_json", "--tsv": "tsv"},
    "best": {"--json": "as_json", "--all": "all_branches"},
    "memory": {"--all": "all_branches"},
}
VALUES: dict[str, dict[str, str]] = {"log": {"--limit": "limit", "-n": "limit"}, "memory": {"--max-chars": "max_chars"}}


def log_text(all_branches: bool = False, as_json: bool = False, tsv: bool = False,
             limit: int | None = None) -> tuple[str, bool]:
    """`gitar log`'s output and whether a newline follows it."""
    from gitar.commands.log import json_lines, load_history, newest_first, table_lines, tsv_text

    if as_json and tsv:
        raise GitarError("--json and --tsv are two formats; pick one")
    h = load_history(all_branches)
    attempts = newest_first(h, limit)
    if tsv:
        return tsv_text(attempts[::-1]), False
    # One write: 10,000 attempts are 10,000 lines (json_lines are escaped already).
    if as_json:
        return "\n".join(json_lines(attempts)), True
    return lines_text(table_lines(h, attempts)), True


def best_text(as_json: bool = False, all_branches: bool = False) -> str:
    from gitar.commands.best import best_lines, find_best, find_global_best, global_best_lines

    if all_branches:
        every = find_global_best()
        return json_line(every.as_dict()) if as_json else lines_text(global_best_lines(every))
    report = find_best()
    return json_line(report.as_dict()) if as_json else lines_text(best_lines(report))


def memory_text(max_chars: int = 6000, all_branches: bool = False) -> str:
    from gitar.commands.memory import build_memory

    return build_memory(max_chars, all_branches=all_branches)  # escaped line by line as it is fitted


def lines_text(lines: object) -> str:
    """Lines as cli.output.say prints them: each escaped (safe()), joined into one write."""
    return "\n".join(map(safe, lines))  # type: ignore[call-overload]


def planned(args: list[str]) -> Callable[[], None] | None:
    """The command to run here for these arguments, or None: typer parses them."""
    if not args or args[0] not in FLAGS:
        return None
    command, flags, values = args[0], FLAGS[args[0]], VALUES.get(args[0], {})
    options: dict[str, object] = {}
    rest = iter(args[1:])
    for arg in rest:
        if arg in flags and flags[arg] not in options:
            options[flags[arg]] = True
        elif arg in values and values[arg] not in options:
            value = next(rest, None)
            if value is None or not value.isascii() or not value.isdigit():
                return None  # typer says what is wrong with it
            options[values[arg]] = int(value)
        else:
            return None
    if command == "log":
        def run() -> None:
            text, newline = log_text(**options)  # type: ignore[arg-type]
            _write(text, newline)
    elif command == "best":
        def run() -> None:
            _write(best_text(**options))  # type: ignore[arg-type]
    else:
        def run() -> None:
            _write(memory_text(**options))  # type: ignore[arg-type]
    return run


def _write(text: str, newline: bool = True) -> None:
    # What typer.echo (click.echo) writes for a str: the text, the newline, a flush.
    out = sys.stdout
    out.write(text + "\n" if newline else text)
    out.flush()
