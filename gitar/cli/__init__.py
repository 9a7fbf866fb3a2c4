"""The command line: typer wiring only. Each command parses and delegates to gitar.commands.

One typer app per command group (loop, review, scale), composed here into the one
`gitar` command. Errors are mapped to exit codes in one place (main): a GitarError
prints its one line and exits with its code; anything unexpected prints one line, saves
the traceback under .git/gitar/ (or the temp dir) and exits INTERNAL.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

import typer

from gitar.cli import loop, review, scale
from gitar.errors import ExitCode, GitarError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="git as the loop, the lab notebook and the referee of autonomous ML research.")
for group in (loop.app, review.app, scale.app):
    app.add_typer(group)


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
