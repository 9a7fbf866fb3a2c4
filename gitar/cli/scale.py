"""Scale out: sync with a remote, and the GPU runner's job."""

from __future__ import annotations

from typing import Annotated

import typer

from gitar.cli.output import emit, interruptible, say
from gitar.errors import ExitCode

app = typer.Typer()


@app.command("sync")
def sync_cmd(
    remote: Annotated[str, typer.Argument(help="the shared remote")] = "origin",
    push: Annotated[bool, typer.Option("--push/--no-push", help="--no-push: fetch and merge only")] = True,
) -> None:
    """Share records, attempt pins and the experiment branch with a remote; never loses a record."""
    from gitar.commands.sync import sync_clone

    say(f"gitar: {line}" for line in sync_clone(remote, push=push).lines())
    raise typer.Exit(ExitCode.OK)


@app.command("ci")
def ci_cmd(
    branch: Annotated[str | None, typer.Argument(help="the pushed experiment branch (default: checked out)")] = None,
    remote: Annotated[str, typer.Option("--remote", help="the shared remote")] = "origin",
    with_sync: Annotated[bool, typer.Option("--sync/--no-sync", help="--no-sync: measure only, "
                                            "no fetch or push (a workflow's credential-free step)")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON record per measured run")] = False,
    init_key: Annotated[bool, typer.Option("--init-key", help="make the runner's signing key if there is none "
                                           "and print the public key for ground.json; run nothing")] = False,
) -> None:
    """A GPU runner's job: measure the pushed branch's unmeasured commits in order, then sync.

    Every record it writes is signed with the runner's key ($GITAR_RUNNER_KEY, default
    ~/.config/gitar/runner-key; made on first use).
    """
    from gitar.commands.ci import init_key as make_key
    from gitar.commands.ci import run_ci

    if init_key:
        typer.echo(make_key())
        raise typer.Exit(ExitCode.OK)
    from gitar.loop.result_line import result_line
    from gitar.store.records import Record, record_dict

    def show(record: Record) -> None:
        emit(result_line(record), record_dict(record), as_json)

    with interruptible():
        outcome = run_ci(branch, remote, with_sync=with_sync, on_record=show)
    say((f"gitar: {line}" for line in outcome.recovered), err=True)
    if not outcome.pending:
        say(f"gitar: {outcome.branch} ({outcome.tip[:7]}): every commit is measured", err=True)
    if outcome.syncs:
        say((f"gitar: {line}" for line in outcome.syncs[-1].lines()), err=True)
    # A discard is a normal outcome of a job, not a failure of it.
    raise typer.Exit(ExitCode.OK)
