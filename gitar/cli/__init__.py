"""The command line: typer wiring only. Each command parses and delegates to gitar.commands.

One typer app per command group (loop, review, scale), composed here into the one
`gitar` command. Errors are mapped to exit codes in one place (main): a GitarError
prints its one line and exits with its code; a usage error (a missing argument, an
unknown option) is one line too, exit 2; anything unexpected prints one line, saves
the traceback under .git/gitar/ (or the temp dir) and exits INTERNAL. With --json,
try/run/wait print that line as a JSON object on stdout instead. A closed stdout
(`gitar show | head -1`) ends the command quietly with exit 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import gitar
from gitar.errors import ExitCode, GitarError, save_traceback
from gitar.text import json_line, safe

if TYPE_CHECKING:
    import click
    import typer


def _app() -> typer.Typer:
    """The typer app. Built on first use: the review commands' plainest forms run without it (cli/fast.py)."""
    global _APP
    if _APP is None:
        import typer

        from gitar.cli import loop, review, scale

        _APP = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                           help="git as the loop, the lab notebook and the referee of autonomous ML research.")
        for group in (loop.app, review.app, scale.app):
            _APP.add_typer(group)

        def print_version(value: bool) -> None:
            if value:
                typer.echo(f"gitar {gitar.__version__}")
                raise typer.Exit()

        @_APP.callback()
        def options(version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                                 help="Print gitar's version and exit.")) -> None:
            """git as the loop, the lab notebook and the referee of autonomous ML research."""
    return _APP


_APP: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    if name == "app":  # gitar.cli.app, as before
        return _app()
    raise AttributeError(name)


def _save_traceback() -> str:
    from gitar.store.git import gitar_dir

    return save_traceback(gitar_dir())


# Commands whose every outcome, with --json, is one JSON object on stdout (refusals and errors too).
_JSON_OUTCOMES = ("try", "run", "wait")
_STATUS_OF = {ExitCode.REFUSED: "refused", ExitCode.INTERRUPTED: "interrupted"}


def _wants_json(args: list[str]) -> bool:
    options = args[: args.index("--")] if "--" in args else args
    return bool(options) and options[0] in _JSON_OUTCOMES and "--json" in options


def _usage_line(e: click.UsageError) -> str:
    """click's usage error as one line naming the argument (typer would draw a four-line box)."""
    import click

    command = e.ctx.command_path if e.ctx is not None else "gitar"
    param = e.param if isinstance(e, click.MissingParameter) else None
    if param is not None and param.param_type_name == "argument":
        hint = getattr(param, "help", None)
        what = f"missing argument {param.human_readable_name}" + (f" ({hint})" if hint else "")
    else:
        what = e.format_message().rstrip(".")
        what = what[:1].lower() + what[1:]
    return f"{command}: {what}; see `{command} --help`"


def _echo(text: str, err: bool = False) -> None:
    """What typer.echo writes for a str: the text, a newline, a flush."""
    out = sys.stderr if err else sys.stdout
    out.write(text + "\n")
    out.flush()


def _pipe_closed() -> int:
    """The reader went away (`gitar show | head -1`): not an error. Exit 0 without another word.

    Later writes, and the interpreter's last flush, go to /dev/null: a flush into the closed pipe
    at exit would print a BrokenPipeError warning and exit 120.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return int(ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every outcome to a documented exit code (README, "Exit codes")."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = _wants_json(args)

    def fail(code: ExitCode, message: str, kind: str = "error: ") -> int:
        """One line on stderr (`gitar: error: …`), or with --json one object on stdout."""
        if as_json:
            _echo(json_line({"status": _STATUS_OF.get(code, "error"), "exit_code": int(code), "message": message}))
        else:
            _echo(f"gitar: {kind}{safe(message)}", err=True)
        return int(code)

    from gitar.cli.fast import planned

    fast = planned(args)
    if fast is not None:  # without typer: the same outcomes, mapped as below
        try:
            fast()
        except BrokenPipeError:
            return _pipe_closed()
        except GitarError as e:
            return fail(e.code, e.message, "" if e.code == ExitCode.INTERRUPTED else "error: ")
        except KeyboardInterrupt:
            return fail(ExitCode.INTERRUPTED, "interrupted", "")
        except Exception as e:
            where = _save_traceback()
            return fail(ExitCode.INTERNAL, f"{type(e).__name__}: {e} (traceback: {where})", "internal error: ")
        return int(ExitCode.OK)

    import click

    stdout = sys.stdout
    try:
        try:
            code = _app()(args=args, prog_name="gitar", standalone_mode=False)
            sys.stdout.flush()
        except SystemExit as e:
            # typer catches a closed pipe itself: it wraps sys.stdout in click's PacifyFlushWrapper
            # and exits 1, the code for "not kept". The swapped stdout tells it from a real 1.
            if sys.stdout is not stdout:
                return _pipe_closed()
            return e.code if isinstance(e.code, int) else int(ExitCode.OK if e.code is None else ExitCode.REFUSED)
    except BrokenPipeError:
        return _pipe_closed()
    except click.exceptions.NoArgsIsHelpError as e:
        _echo(e.format_message())  # `gitar` alone: the help, as before
        return int(ExitCode.REFUSED)
    except click.UsageError as e:
        return fail(ExitCode.REFUSED, _usage_line(e))
    except click.ClickException as e:
        return fail(ExitCode.REFUSED, e.format_message())
    except GitarError as e:
        return fail(e.code, e.message, "" if e.code == ExitCode.INTERRUPTED else "error: ")
    except (KeyboardInterrupt, click.Abort):
        return fail(ExitCode.INTERRUPTED, "interrupted", "")
    except Exception as e:
        where = _save_traceback()
        return fail(ExitCode.INTERNAL, f"{type(e).__name__}: {e} (traceback: {where})", "internal error: ")
    return int(ExitCode.OK) if code is None else int(code)
