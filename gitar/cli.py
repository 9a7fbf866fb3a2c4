"""The command line: typer wiring only. Each command parses and delegates to gitar.commands.

Errors are mapped to exit codes in one place (main): a GitarError prints its one line
and exits with its code; anything unexpected prints one line, saves the traceback
under .git/gitar/ (or the temp dir) and exits INTERNAL.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer

from gitar.errors import ExitCode, GitarError
from gitar.paths import Paths

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="git as the loop, the lab notebook and the referee of autonomous ML research.")


def _emit(record_line: str, data: Mapping[str, object] | None, as_json: bool) -> None:
    if as_json and data is not None:
        typer.echo(json.dumps(data, ensure_ascii=False))
    else:
        typer.echo(record_line)


@app.command("init")
def init_cmd(tag: Annotated[str, typer.Argument(help="names the branch autoresearch/TAG")]) -> None:
    """Create the experiment branch autoresearch/TAG here and install the hooks."""
    from gitar.commands.init import init_workspace

    result = init_workspace(tag)
    verb = "created" if result.created else "already on"
    typer.echo(f"gitar: {verb} {result.branch}; hooks installed; notes shown by `git log`")
    for w in result.warnings:
        typer.echo(f"gitar: warning: {w}", err=True)
    typer.echo("gitar: next: `gitar run` measures the baseline, then `gitar try \"what I changed\"`")
    raise typer.Exit(ExitCode.KEPT)


@app.command("try")
def try_cmd(
    description: Annotated[str, typer.Argument(help="what you changed, one line")],
    detach: Annotated[bool, typer.Option("--detach", help="return once the run has started")] = False,
    hypothesis: Annotated[str | None, typer.Option("--hypothesis", help="why you expect it to help")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
) -> None:
    """Commit train.py/model.json changes; the hooks preflight, train, judge and record them."""
    from gitar.commands.try_ import Started, try_experiment
    from gitar.records import record_dict
    from gitar.report import exit_code, result_line

    live = sys.stderr.isatty() and not as_json
    outcome = try_experiment(description, detach=detach, hypothesis=hypothesis, on_progress=_live_progress() if live else None)
    if live:
        sys.stderr.write("\r\033[K")
    if isinstance(outcome, Started):
        data = {"status": "started", "run_id": outcome.run_id, "commit": outcome.commit, "log": outcome.log}
        _emit(f"started {outcome.commit[:7]} \"{outcome.description.splitlines()[0][:60]}\"; "
              "`gitar status` to watch, `gitar wait` for the result", data, as_json)
        raise typer.Exit(ExitCode.KEPT)
    _emit(result_line(outcome), record_dict(outcome), as_json)
    raise typer.Exit(exit_code(outcome))


def _live_progress() -> Callable[[Paths], None]:
    """A progress line on the terminal, read from the log file (hook output is buffered)."""
    from gitar import runner, state
    from gitar.commands.status import progress_line

    def show(paths: Paths) -> None:
        running = state.load(paths)
        if running is None:
            return
        line = progress_line(running, runner.read_progress(Path(running.log)))
        sys.stderr.write("\r\033[K" + line[:150])
        sys.stderr.flush()

    return show


@app.command("run")
def run_cmd(
    rev: Annotated[str, typer.Argument(help="the commit to measure (the branch tip)")] = "HEAD",
    repeat: Annotated[int, typer.Option("--repeat", help="record N runs with different seeds")] = 1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run and record an existing commit without committing (baseline, re-measurement)."""
    from gitar.commands.run import run_commit
    from gitar.records import record_dict
    from gitar.report import exit_code, result_line

    records = run_commit(rev, repeat)
    for r in records:
        _emit(result_line(r), record_dict(r), as_json)
    raise typer.Exit(max(exit_code(r) for r in records))


@app.command("status")
def status_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the running experiment and the branch's best."""
    from gitar.commands.status import get_status, status_lines

    s = get_status()
    if as_json:
        typer.echo(json.dumps(s.as_dict()))
    else:
        for line in status_lines(s):
            typer.echo(line)
    raise typer.Exit(ExitCode.KEPT)


@app.command("wait")
def wait_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="give up after this many seconds")] = None,
) -> None:
    """Block until the running experiment is recorded; prints what `gitar try` would have."""
    from gitar.commands.wait import wait_for_result
    from gitar.records import record_dict
    from gitar.report import exit_code, result_line

    record = wait_for_result(timeout_s=timeout)
    _emit(result_line(record), record_dict(record), as_json)
    raise typer.Exit(exit_code(record))


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path, typer.Argument(help="a new directory for the demo workspace")] = Path("gitar-demo"),
) -> None:
    """Build a CPU workspace with an embedded corpus and run the loop in it (no GPU, no network)."""
    from gitar.commands.demo import run_demo

    run_demo(directory, echo=typer.echo)
    raise typer.Exit(ExitCode.KEPT)


def _save_traceback() -> str:
    text = traceback.format_exc()
    try:
        from gitar.git import Git

        base = Git.discover().common_dir / "gitar"
    except Exception:
        base = Path(tempfile.gettempdir()) / "gitar"
    try:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(text)
        return str(path)
    except OSError:
        return "(could not be saved)"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every outcome to a documented exit code (README, "Exit codes")."""
    try:
        app(args=argv, prog_name="gitar", standalone_mode=True)
    except SystemExit as e:  # typer.Exit from a command, or a usage error (click exits 2)
        return e.code if isinstance(e.code, int) else int(ExitCode.KEPT if e.code is None else ExitCode.REFUSED)
    except GitarError as e:
        typer.echo(f"gitar: error: {e.message}", err=True)
        return int(e.code)
    except KeyboardInterrupt:
        typer.echo("gitar: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as e:
        where = _save_traceback()
        typer.echo(f"gitar: internal error: {type(e).__name__}: {e} (traceback: {where})", err=True)
        return int(ExitCode.INTERNAL)
    return int(ExitCode.KEPT)


if __name__ == "__main__":
    sys.exit(main())
