"""The loop: init, try, run, status, wait, demo."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gitar.cli.output import emit, emit_lines, interruptible, say
from gitar.errors import ExitCode
from gitar.paths import Paths

if TYPE_CHECKING:
    from gitar.store.records import Record

app = typer.Typer()


@app.command("init")
def init_cmd(
    tag: Annotated[str, typer.Argument(help="names the branch autoresearch/TAG")],
    worktrees: Annotated[int, typer.Option(
        "--worktrees", help="N worktrees, one per GPU: branches autoresearch/TAG-gpu0..N-1, device K pinned")] = 0,
    worktree_dir: Annotated[Path | None, typer.Option(
        "--worktree-dir", help="where the worktrees go (default: beside this checkout)")] = None,
) -> None:
    """Create the experiment branch autoresearch/TAG here and install the hooks."""
    from gitar.commands.init import init_workspace

    if worktree_dir is not None and not worktrees:
        raise typer.BadParameter("goes with --worktrees N", param_hint="--worktree-dir")
    result = init_workspace(tag, worktrees=worktrees, worktree_dir=worktree_dir)
    if result.adopted is not None:
        say(f"gitar: committed gitar's files on {result.adopted.branch} as {result.adopted.commit[:7]}")
    if result.worktrees:
        for w in result.worktrees:
            verb = "created" if w.created else "kept"
            say(f"gitar: {verb} {w.branch} in {w.path} (GPU {w.device})")
        typer.echo("gitar: hooks installed; notes shown by `git log`")
    else:
        verb = "created" if result.created else "already on"
        say(f"gitar: {verb} {result.branch}; hooks installed; notes shown by `git log`")
    for warning in result.warnings:
        say(f"gitar: warning: {warning}", err=True)
    where = " in each worktree" if result.worktrees else ""
    typer.echo(f"gitar: next: `gitar run` measures the baseline{where}, then `gitar try \"what I changed\"`")
    raise typer.Exit(ExitCode.OK)


@app.command("try")
def try_cmd(
    description: Annotated[str, typer.Argument(help="what you changed, one line")],
    detach: Annotated[bool, typer.Option("--detach", help="return once the run has started")] = False,
    hypothesis: Annotated[str | None, typer.Option("--hypothesis", help="why you expect it to help")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="preflight here, push, and let this remote's GPU runner measure it")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="with --remote: return once pushed")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="with --remote: stop waiting after this many seconds")] = None,
    poll: Annotated[float, typer.Option("--poll", help="with --remote: seconds between fetches of the records")] = 10.0,
) -> None:
    """Commit train.py/model.json changes; the hooks preflight, train, judge and record them."""
    from gitar.commands.try_ import Started, try_experiment
    from gitar.loop.result_line import exit_code, result_line
    from gitar.review.history import one_line
    from gitar.sharing.remote_queue import Queued
    from gitar.store.records import record_dict

    if remote is None and (no_wait or timeout is not None):
        raise typer.BadParameter("goes with --remote", param_hint="--no-wait/--timeout")
    live = sys.stderr.isatty() and not as_json
    with interruptible():
        outcome = try_experiment(description, detach=detach, hypothesis=hypothesis,
                                 on_progress=_live_progress() if live and remote is None else None, remote=remote)
    if live:
        sys.stderr.write("\r\033[K")
    if isinstance(outcome, Started):
        data = {"status": "started", "run_id": outcome.run_id, "commit": outcome.commit, "log": outcome.log}
        emit(f"started {outcome.commit[:7]} \"{one_line(outcome.description, 60)}\"; "
             "`gitar status` to watch, `gitar wait` for the result", data, as_json, ExitCode.OK)
        raise typer.Exit(ExitCode.OK)
    if isinstance(outcome, Queued):
        if no_wait:
            data = {"status": "queued", "commit": outcome.commit, "remote": outcome.remote, "branch": outcome.branch}
            emit(f"queued {outcome.commit[:7]} \"{one_line(outcome.description, 60)}\" for the runner of "
                 f"{outcome.remote}; `gitar wait --remote {outcome.remote}` for the result", data, as_json,
                 ExitCode.OK)
            raise typer.Exit(ExitCode.OK)
        outcome = _wait_remote(outcome.remote, outcome.commit, timeout, poll)
    emit(result_line(outcome), record_dict(outcome), as_json, exit_code(outcome))
    raise typer.Exit(exit_code(outcome))


def _wait_remote(remote: str, commit: str | None, timeout: float | None, poll: float) -> Record:
    """The verdict of a queued commit (the branch tip by default), fetched from the remote."""
    from gitar.loop.workspace import open_workspace
    from gitar.sharing.remote_queue import wait_for_verdict

    ws = open_workspace()
    sha = ws.git.resolve(commit) if commit else ws.head
    say(f"gitar: waiting for the runner of {remote} to measure {sha[:7]}…", err=True)
    try:
        return wait_for_verdict(ws.git, ws.branch, sha, remote, timeout_s=timeout, poll_s=poll)
    except KeyboardInterrupt:
        say(f"gitar: stopped waiting; {sha[:7]} stays queued — `gitar wait --remote {remote}` "
            "picks the result up later", err=True)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def _live_progress() -> Callable[[Paths], None]:
    """A progress line on the terminal, read from the log file (hook output is buffered)."""
    from gitar.commands.status import progress_line
    from gitar.host import runner, state
    from gitar.text import safe

    def show(paths: Paths) -> None:
        running = state.load(paths)
        if running is None:
            return
        line = progress_line(running, runner.read_progress(Path(running.log)))
        sys.stderr.write("\r\033[K" + safe(line)[:150])
        sys.stderr.flush()

    return show


@app.command("run")
def run_cmd(
    rev: Annotated[str, typer.Argument(help="the commit to measure (the branch tip)")] = "HEAD",
    repeat: Annotated[int, typer.Option("--repeat", help="record N runs with different seeds")] = 1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run and record an existing commit without committing (baseline, re-measurement)."""
    from gitar.commands.run import best_after_remeasuring, run_commit
    from gitar.loop.result_line import exit_code, result_line
    from gitar.store.records import record_dict

    with interruptible():
        records = run_commit(rev, repeat)
    for r in records:
        emit(result_line(r), record_dict(r), as_json, exit_code(r))
    summary = None if as_json else best_after_remeasuring(records)  # --json: one object per run, as ever
    if summary is not None:
        say(summary)
    raise typer.Exit(max(exit_code(r) for r in records))


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    all_worktrees: Annotated[bool, typer.Option(
        "--all", help="every worktree of this clone: its running experiment, phase, time left, GPU")] = False,
) -> None:
    """Show the running experiment (its phase and time left) and the branch's best."""
    from gitar.commands.status import all_status, all_status_lines, get_status, status_lines

    if all_worktrees:
        trees = all_status()
        emit_lines({"worktrees": [t.as_dict() for t in trees]}, all_status_lines(trees), as_json)
    else:
        s = get_status()
        emit_lines(s.as_dict(), status_lines(s), as_json)
    raise typer.Exit(ExitCode.OK)


@app.command("wait")
def wait_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="give up after this many seconds")] = None,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="wait for this remote's runner to measure the branch tip (gitar try --remote --no-wait)")] = None,
    poll: Annotated[float, typer.Option("--poll", help="with --remote: seconds between fetches")] = 10.0,
) -> None:
    """Block until the running experiment is recorded; prints what `gitar try` would have."""
    from gitar.commands.wait import wait_for_result
    from gitar.loop.result_line import exit_code, result_line
    from gitar.store.records import record_dict

    record = _wait_remote(remote, None, timeout, poll) if remote else wait_for_result(timeout_s=timeout)
    emit(result_line(record), record_dict(record), as_json, exit_code(record))
    raise typer.Exit(exit_code(record))


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path | None, typer.Argument(
        help="a new directory for the demo workspace (default: ./gitar-demo, or -2, -3… if taken)")] = None,
) -> None:
    """Build a CPU workspace with an embedded corpus and run the loop in it (no GPU, no network)."""
    from gitar.commands.demo import default_directory, run_demo

    run_demo(directory or default_directory(Path.cwd()), echo=typer.echo)
    raise typer.Exit(ExitCode.OK)
