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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gitar.errors import ExitCode, GitarError
from gitar.paths import Paths

if TYPE_CHECKING:
    from gitar.records import Record

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="git as the loop, the lab notebook and the referee of autonomous ML research.")


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a run: one line saying what became of it, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("gitar: interrupted; any run under way was stopped and recorded as aborted "
                   "(`gitar log` shows it)", err=True)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def _emit(record_line: str, data: Mapping[str, object] | None, as_json: bool) -> None:
    if as_json and data is not None:
        typer.echo(json.dumps(data, ensure_ascii=False))
    else:
        typer.echo(record_line)


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
    if result.worktrees:
        for w in result.worktrees:
            verb = "created" if w.created else "kept"
            typer.echo(f"gitar: {verb} {w.branch} in {w.path} (GPU {w.device})")
        typer.echo("gitar: hooks installed; notes shown by `git log`")
    else:
        verb = "created" if result.created else "already on"
        typer.echo(f"gitar: {verb} {result.branch}; hooks installed; notes shown by `git log`")
    for warning in result.warnings:
        typer.echo(f"gitar: warning: {warning}", err=True)
    where = " in each worktree" if result.worktrees else ""
    typer.echo(f"gitar: next: `gitar run` measures the baseline{where}, then `gitar try \"what I changed\"`")
    raise typer.Exit(ExitCode.KEPT)


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
    from gitar.records import record_dict
    from gitar.remote_queue import Queued
    from gitar.report import exit_code, result_line

    if remote is None and (no_wait or timeout is not None):
        raise typer.BadParameter("goes with --remote", param_hint="--no-wait/--timeout")
    live = sys.stderr.isatty() and not as_json
    with _interruptible():
        outcome = try_experiment(description, detach=detach, hypothesis=hypothesis,
                                 on_progress=_live_progress() if live and remote is None else None, remote=remote)
    if live:
        sys.stderr.write("\r\033[K")
    if isinstance(outcome, Started):
        data = {"status": "started", "run_id": outcome.run_id, "commit": outcome.commit, "log": outcome.log}
        _emit(f"started {outcome.commit[:7]} \"{outcome.description.splitlines()[0][:60]}\"; "
              "`gitar status` to watch, `gitar wait` for the result", data, as_json)
        raise typer.Exit(ExitCode.KEPT)
    if isinstance(outcome, Queued):
        if no_wait:
            data = {"status": "queued", "commit": outcome.commit, "remote": outcome.remote, "branch": outcome.branch}
            _emit(f"queued {outcome.commit[:7]} \"{outcome.description.splitlines()[0][:60]}\" for the runner of "
                  f"{outcome.remote}; `gitar wait --remote {outcome.remote}` for the result", data, as_json)
            raise typer.Exit(ExitCode.KEPT)
        outcome = _wait_remote(outcome.remote, outcome.commit, timeout, poll)
    _emit(result_line(outcome), record_dict(outcome), as_json)
    raise typer.Exit(exit_code(outcome))


def _wait_remote(remote: str, commit: str | None, timeout: float | None, poll: float) -> Record:
    """The verdict of a queued commit (the branch tip by default), fetched from the remote."""
    from gitar.commands.common import open_workspace
    from gitar.remote_queue import wait_for_verdict

    ws = open_workspace()
    sha = ws.git.resolve(commit) if commit else ws.head
    typer.echo(f"gitar: waiting for the runner of {remote} to measure {sha[:7]}…", err=True)
    try:
        return wait_for_verdict(ws.git, ws.branch, sha, remote, timeout_s=timeout, poll_s=poll)
    except KeyboardInterrupt:
        typer.echo(f"gitar: stopped waiting; {sha[:7]} stays queued — `gitar wait --remote {remote}` "
                   "picks the result up later", err=True)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


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

    with _interruptible():
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
    remote: Annotated[str | None, typer.Option(
        "--remote", help="wait for this remote's runner to measure the branch tip (gitar try --remote --no-wait)")] = None,
    poll: Annotated[float, typer.Option("--poll", help="with --remote: seconds between fetches")] = 10.0,
) -> None:
    """Block until the running experiment is recorded; prints what `gitar try` would have."""
    from gitar.commands.wait import wait_for_result
    from gitar.records import record_dict
    from gitar.report import exit_code, result_line

    record = _wait_remote(remote, None, timeout, poll) if remote else wait_for_result(timeout_s=timeout)
    _emit(result_line(record), record_dict(record), as_json)
    raise typer.Exit(exit_code(record))


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path | None, typer.Argument(
        help="a new directory for the demo workspace (default: ./gitar-demo, or -2, -3… if taken)")] = None,
) -> None:
    """Build a CPU workspace with an embedded corpus and run the loop in it (no GPU, no network)."""
    from gitar.commands.demo import default_directory, run_demo

    run_demo(directory or default_directory(Path.cwd()), echo=typer.echo)
    raise typer.Exit(ExitCode.KEPT)



@app.command("log")
def log_cmd(
    all_branches: Annotated[bool, typer.Option("--all", help="every branch, not only the current one")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per attempt")] = False,
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv, oldest first "
                                      "(timeout/aborted -> crash; rejected left out)")] = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="only the N newest attempts")] = None,
) -> None:
    """Every attempt on the branch, newest first: sha, status, val_bpb, delta, memory, seconds, description."""
    from gitar.commands.log import json_lines, load_history, newest_first, table_lines, tsv_text

    if as_json and tsv:
        raise GitarError("--json and --tsv are two formats; pick one")
    h = load_history(all_branches)
    attempts = newest_first(h, limit)
    if tsv:
        typer.echo(tsv_text(attempts[::-1]), nl=False)
    else:
        # One write: 10,000 attempts are 10,000 lines.
        typer.echo("\n".join(json_lines(attempts) if as_json else table_lines(h, attempts)))
    raise typer.Exit(ExitCode.KEPT)


@app.command("show")
def show_cmd(
    rev: Annotated[str, typer.Argument(help="the experiment's commit (discarded ones too)")] = "HEAD",
    lines: Annotated[int, typer.Option("--lines", help="how many lines of the log to show")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One experiment: its records, its diff against its parent, the last lines of its log."""
    from gitar.commands.show import show_commit, shown_lines

    shown = show_commit(rev, lines)
    if as_json:
        typer.echo(json.dumps(shown.as_dict(), ensure_ascii=False))
    else:
        for line in shown_lines(shown):
            typer.echo(line)
    raise typer.Exit(ExitCode.KEPT)


@app.command("best")
def best_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The branch's best commit: mean val_bpb over its runs, run count, measured noise."""
    from gitar.commands.best import best_lines, find_best

    report = find_best()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        for line in best_lines(report):
            typer.echo(line)
    raise typer.Exit(ExitCode.KEPT)


@app.command("memory")
def memory_cmd(
    max_chars: Annotated[int, typer.Option("--max-chars", help="the digest's size limit")] = 6000,
) -> None:
    """What was tried, kept, discarded, broken and learned: read it before each hypothesis."""
    from gitar.commands.memory import build_memory

    typer.echo(build_memory(max_chars))
    raise typer.Exit(ExitCode.KEPT)


@app.command("learn")
def learn_cmd(
    rev: Annotated[str, typer.Argument(help="the experiment's commit")],
    lesson: Annotated[str, typer.Argument(help="what it taught, one line")],
) -> None:
    """Keep a lesson with an experiment (a line in its note); `gitar memory` shows it."""
    from gitar.commands.learn import learn
    from gitar.history import one_line

    saved, record = learn(rev, lesson)
    typer.echo(f"learned on {saved.commit[:7]} ({record.status} \"{one_line(record.description, 60)}\"): "
               f"{one_line(saved.lesson, 120)}")
    raise typer.Exit(ExitCode.KEPT)


@app.command("plot")
def plot_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="the PNG to write")] = Path("progress.png"),
) -> None:
    """autoresearch's progress chart from the records: val_bpb per experiment, the best as a step line."""
    from gitar.commands.plot import plot_progress

    done = plot_progress(output)
    typer.echo(f"wrote {done.path} ({done.attempts} experiments, {done.kept} kept)")
    raise typer.Exit(ExitCode.KEPT)


@app.command("sync")
def sync_cmd(
    remote: Annotated[str, typer.Argument(help="the shared remote")] = "origin",
    push: Annotated[bool, typer.Option("--push/--no-push", help="--no-push: fetch and merge only")] = True,
) -> None:
    """Share records, attempt pins and the experiment branch with a remote; never loses a record."""
    from gitar.commands.sync import sync_clone

    for line in sync_clone(remote, push=push).lines():
        typer.echo(f"gitar: {line}")
    raise typer.Exit(ExitCode.KEPT)


@app.command("ci")
def ci_cmd(
    branch: Annotated[str | None, typer.Argument(help="the pushed experiment branch (default: checked out)")] = None,
    remote: Annotated[str, typer.Option("--remote", help="the shared remote")] = "origin",
    with_sync: Annotated[bool, typer.Option("--sync/--no-sync", help="--no-sync: measure only, "
                                            "no fetch or push (a workflow's credential-free step)")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON record per measured run")] = False,
) -> None:
    """A GPU runner's job: measure the pushed branch's unmeasured commits in order, then sync."""
    from gitar.commands.ci import run_ci
    from gitar.records import record_dict
    from gitar.report import result_line

    def show(record: Record) -> None:
        _emit(result_line(record), record_dict(record), as_json)

    with _interruptible():
        outcome = run_ci(branch, remote, with_sync=with_sync, on_record=show)
    for line in outcome.recovered:
        typer.echo(f"gitar: {line}", err=True)
    if not outcome.pending:
        typer.echo(f"gitar: {outcome.branch} ({outcome.tip[:7]}): every commit is measured", err=True)
    if outcome.syncs:
        for line in outcome.syncs[-1].lines():
            typer.echo(f"gitar: {line}", err=True)
    # A discard is a normal outcome of a job, not a failure of it.
    raise typer.Exit(ExitCode.KEPT)


@app.command("verify")
def verify_cmd(
    branch: Annotated[str | None, typer.Option("--branch", help="the experiment branch (default: checked out)")] = None,
) -> None:
    """Re-check every kept record of the branch: its base's harness, the commit's files, the evaluator.

    Exit 0 when clean, 1 when a problem was found (one line each), 2 when the branch cannot be checked.
    """
    from gitar.commands.verify import verification_lines, verify_branch

    result = verify_branch(branch)
    for line in verification_lines(result):
        typer.echo(line)
    raise typer.Exit(ExitCode.KEPT if result.clean else ExitCode.NOT_KEPT)


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
