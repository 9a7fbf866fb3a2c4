"""Review: log, show, best, memory, learn, plot, verify — all drawn from the records in git."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitar.cli.output import emit_lines, say
from gitar.errors import ExitCode

app = typer.Typer()


@app.command("log")
def log_cmd(
    all_branches: Annotated[bool, typer.Option("--all", help="every branch, not only the current one")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per attempt")] = False,
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv, oldest first "
                                      "(timeout/aborted -> crash; rejected left out)")] = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="only the N newest attempts")] = None,
) -> None:
    """Every attempt on the branch, newest first: sha, status, val_bpb, delta, memory, seconds, steps, tokens/s, description."""
    from gitar.cli.fast import log_text

    text, newline = log_text(all_branches, as_json, tsv, limit)
    typer.echo(text, nl=newline)
    raise typer.Exit(ExitCode.OK)


@app.command("show")
def show_cmd(
    rev: Annotated[str, typer.Argument(help="the experiment's commit (discarded ones too)")] = "HEAD",
    lines: Annotated[int, typer.Option("--lines", help="how many lines of the log to show")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One experiment: its records, its diff against its parent, the last lines of its log."""
    from gitar.commands.show import show_commit, shown_lines

    shown = show_commit(rev, lines)
    emit_lines(shown.as_dict(), shown_lines(shown), as_json)
    raise typer.Exit(ExitCode.OK)


@app.command("best")
def best_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    all_branches: Annotated[bool, typer.Option("--all", help="every experiment branch, and the best of them")] = False,
) -> None:
    """The branch's best commit: mean val_bpb over its runs, run count, measured noise."""
    from gitar.cli.fast import best_text

    typer.echo(best_text(as_json, all_branches))
    raise typer.Exit(ExitCode.OK)


@app.command("memory")
def memory_cmd(
    max_chars: Annotated[int, typer.Option("--max-chars", help="the digest's size limit")] = 6000,
    all_branches: Annotated[bool, typer.Option("--all", help="also what every other agent's branch tried")] = False,
) -> None:
    """What was tried, kept, discarded, broken and learned: read it before each hypothesis."""
    from gitar.cli.fast import memory_text

    typer.echo(memory_text(max_chars, all_branches))
    raise typer.Exit(ExitCode.OK)


@app.command("learn")
def learn_cmd(
    rev: Annotated[str, typer.Argument(help="the experiment's commit")],
    lesson: Annotated[str, typer.Argument(help="what it taught, one line")],
) -> None:
    """Keep a lesson with an experiment (a line in its note); `gitar memory` shows it."""
    from gitar.commands.learn import learn
    from gitar.review.history import one_line

    saved, record = learn(rev, lesson)
    say(f"learned on {saved.commit[:7]} ({record.status} \"{one_line(record.description, 60)}\"): "
        f"{one_line(saved.lesson, 120)}")
    raise typer.Exit(ExitCode.OK)


@app.command("plot")
def plot_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="the PNG to write")] = Path("progress.png"),
) -> None:
    """autoresearch's progress chart from the records: val_bpb per experiment, the best as a step line."""
    from gitar.commands.plot import plot_progress

    done = plot_progress(output)
    say(f"wrote {done.path} ({done.attempts} experiments, {done.kept} kept)")
    raise typer.Exit(ExitCode.OK)


@app.command("verify")
def verify_cmd(
    branch: Annotated[str | None, typer.Option("--branch", help="the experiment branch (default: checked out)")] = None,
    require_signed: Annotated[bool, typer.Option("--require-signed", help="a kept run not signed by a runner "
                                                 "ground.json trusts is a problem")] = False,
    accept: Annotated[bool, typer.Option("--accept", help="record the current notes, the records gitar did not "
                                         "write and the branch tip in gitar's ledger (printing each), then verify")] = False,
    rerun: Annotated[int, typer.Option("--rerun", help="re-measure the N best kept commits (recorded, never "
                                       "counted, the branch never moves)", metavar="N")] = 0,
) -> None:
    """Re-check every kept record of the branch: its base's harness, the commit's files, the evaluator,
    the sandbox, and that gitar wrote, synced or a trusted runner signed it.

    Exit 0 when clean, 1 when a problem was found (one line each), 2 when the branch cannot be checked.
    """
    from gitar.commands.verify import verification_lines, verify_branch

    result = verify_branch(branch, require_signed=require_signed, accept=accept, rerun=rerun)
    say(verification_lines(result))
    raise typer.Exit(ExitCode.OK if result.clean else ExitCode.PROBLEMS_FOUND)
