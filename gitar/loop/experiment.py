"""One experiment, start to finish: snapshot, train, judge, record, then keep or reset.

The order is the point. The attempt is pinned before it runs, the record is written
before the branch moves, and the branch moves with compare-and-swap. Whatever
interrupts this sequence, the next gitar command can finish it (see recovery.py)
and no attempt's code or numbers are lost.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gitar import numbers, shared
from gitar.config.schema import Ground, ground_at
from gitar.errors import GitarError
from gitar.host import confine, runner, signals, state
from gitar.host.processes import start_time
from gitar.loop import integrity, repeats, run_record, trust
from gitar.loop.judge import Best, Policy, Sigma, Verdict, current_best, judge, sigma_of
from gitar.loop.opened import Opened
from gitar.numbers import number_or_none
from gitar.paths import Paths
from gitar.review.noise import branch_noise, commit_spread
from gitar.runtime.seed import read_seed
from gitar.store import ledger, pins
from gitar.store.branch import MOVED_ELSEWHERE, PENDING, move_branch, moved_elsewhere
from gitar.store.git import Git
from gitar.store.records import ABORTED, CRASH, KEEP, REJECTED, UNDECIDED, VERIFY, Notebook, Record, best_of
from gitar.store.refs import branch_ref
from gitar.text import subject


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Plan:
    """What to run and what may happen to the branch afterwards."""

    commit: str
    branch: str
    description: str
    kind: str  # attempt (a new commit on the branch) | baseline | rerun | verify (an existing commit, branch never moves)
    best: Best | None
    run_id: str
    seed: int
    hypothesis: str | None = None  # why the agent expected it to help (gitar try --hypothesis)
    # Set when the run starts (_identified): the commit's agent_sha256, and for an attempt the
    # earlier attempts with the same files (gitar/loop/repeats.py). Every record of the plan carries them.
    content: str | None = None
    earlier: tuple[repeats.Earlier, ...] = ()
    smoke_s: float | None = None  # the preflight's smoke step, when the process running the plan ran it


def plan_attempt(ws: Opened, sha: str, branch: str, description: str, run_id: str | None = None,
                 hypothesis: str | None = None) -> Plan:
    """A new commit on the branch, judged against the best it was built on (its first parent).

    Refuses (trust.check_judging) when the notebook or the branch is not what gitar left.
    """
    git, notebook = ws.git, ws.notebook
    parents = git.commit(sha).parent_ids
    parent = str(parents[0]) if parents else None
    best = current_best(notebook, branch, parent)
    # The attempt must build on where gitar left the branch (a plain commit on it does; a commit
    # on a branch moved back or sideways does not); its best must rest on gitar's own records.
    trust.check_judging(notebook, branch, sha, parent, best.commit if best else None)
    return Plan(sha, branch, description, "attempt", best, run_id or new_run_id(),
                _next_seed(notebook, sha, branch), hypothesis or None)


def plan_rerun(ws: Opened, sha: str, branch: str, run_id: str | None = None, *, verify: bool = False) -> Plan:
    """Another measurement of an existing commit (`gitar run`): the baseline if the branch has none.

    verify: a `gitar verify --rerun` run of a kept commit (kind "verify"): checked, never
    counted, and not refused on a notebook that verify is there to examine.
    """
    git, notebook = ws.git, ws.notebook
    best = current_best(notebook, branch, sha)
    description = subject(git.commit(sha).message)  # the subject: the body is no description
    if verify:
        if best is None:
            raise GitarError(f"{sha[:7]} is not a kept commit of {branch}; verify --rerun re-measures kept commits")
        return Plan(sha, branch, description, VERIFY, best, run_id or new_run_id(), _next_seed(notebook, sha, branch))
    trust.check_judging(notebook, branch, sha, sha, best.commit if best else None)
    kind = "rerun" if best is not None else "baseline"
    return Plan(sha, branch, description, kind, best, run_id or new_run_id(), _next_seed(notebook, sha, branch))


def _next_seed(notebook: Notebook, sha: str, branch: str) -> int:
    """Each run of a commit gets its own seed, so repeats measure noise rather than repeat it."""
    seen = sum(1 for r in notebook.records(sha) if r.branch == branch)
    return read_seed() + seen  # $GITAR_SEED as the first run's seed: train.py's own rule, refused alike


def execute(ws: Opened, plan: Plan, *, pid: int | None = None) -> Record:
    """Run the plan, judge and record it; under the confirm rule, run it again until decided.

    The caller holds the experiment lock for the whole sequence. While confirm re-runs a
    candidate the branch stays on it: each undecided run is recorded (kind "confirm") and
    running.json always names this attempt, so a gitar that dies mid-sequence is finished
    by the next command (recorded as aborted, branch back to the best). Only the run that
    decides gets the plan's run id, the one `gitar try` and `gitar wait` look for.
    """
    # Stop requests wait except while a trainer or the evaluator runs (the runner takes them
    # there): a Ctrl-C never falls between a run and its record.
    with signals.stop_signals_held():
        return _execute(ws, plan, pid)


def _execute(ws: Opened, plan: Plan, pid: int | None) -> Record:
    git, paths, notebook = ws.git, ws.paths, ws.notebook
    ground = ground_at(git, plan.commit)
    policy = Policy.of(ground.experiment)
    # Pin first: from here on, nothing can make this commit or its note unreachable.
    notebook.pin(plan.commit, plan.description)
    plan = _identified(ws, plan, ground)
    base, refusal = integrity.admit(git, plan.branch, plan.commit, _base_fallback(git, plan), ground)
    if refusal is None:
        refusal = _repeat_refusal(plan, ground)
    if refusal is not None:
        # Never trained: a result measured by another harness or on other data could not count.
        return finish(ws, plan, _rejected(git, plan, ground, refusal))
    snapshot = paths.snapshots / plan.run_id
    earlier: list[float] = []  # the candidate's undecided runs so far (confirm)
    try:
        while True:
            run_key = new_run_id() if earlier else plan.run_id  # names this run's log
            seed = _next_seed(notebook, plan.commit, plan.branch) if earlier else plan.seed
            this = replace(plan, seed=seed)
            result, measured, timings = _train(ws, this, ground, snapshot, run_key, pid, base)
            if plan.smoke_s is not None and not earlier:  # the smoke step preceded the first run only
                timings = {"smoke_s": round(plan.smoke_s, 3), **timings}
            val_bpb = measured.val_bpb
            # Under strict too when there is a number: the record keeps the σ a keep is flagged by.
            noise = branch_noise(notebook, plan.branch) if policy.needs_noise or val_bpb is not None else None
            sigma = sigma_of(noise, policy.noise_floor)
            verdict = _verdict(measured, result, plan, policy, sigma, earlier)
            measured_sigma = sigma.value if noise is not None else None
            if verdict.status != UNDECIDED or val_bpb is None:
                record = _record(ws, this, ground, result, verdict, measured, measured_sigma)
                record.timings = timings
                record.noise = _repeat_noise(notebook, record)
                return finish(ws, plan, record)
            undecided = _record(ws, this, ground, result, verdict, measured, measured_sigma)
            undecided.timings = timings
            undecided.run_id = run_key if earlier else new_run_id()
            # Not "attempt": recovery moves a branch back from a tip whose last record is an
            # attempt that was not kept, and this one is still being decided.
            undecided.kind = "confirm"
            notebook.append(_stamped(plan, undecided))
            earlier.append(val_bpb)
    except GitarError as e:
        # Committed and pinned, but it could not be run or measured (the log's volume is full,
        # the snapshot cannot be written, ...): recorded with the reason, never left unjudged.
        return finish(ws, plan, _not_run(git, plan, ground, e))
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
        state.clear(paths, plan.run_id)


def _identified(ws: Opened, plan: Plan, ground: Ground) -> Plan:
    """The plan with its commit's file identity and, for a new attempt, the earlier ones it repeats.

    Looked up once, before the run: what it repeats is what had been tried when it started.
    A re-measurement (baseline, rerun, verify) measures the same commit on purpose: no repeat.
    """
    git, agent = ws.git, ground.experiment.agent_owned
    content = repeats.commit_content(git, plan.commit, agent)
    if content is None or plan.kind != "attempt":
        return replace(plan, content=content)
    change = repeats.Change(content, integrity.harness_sha256(git, plan.commit), plan.branch)
    return replace(plan, content=content, earlier=tuple(repeats.find(ws, change, agent, exclude=plan.commit)))


def _stamped(plan: Plan, record: Record) -> Record:
    """The record with the plan's file identity and what it repeats (unless it says already)."""
    if record.agent_sha256 is None:
        record.agent_sha256 = plan.content
    if record.repeat_of is None and plan.kind == "attempt":
        record.repeat_of = repeats.summary(list(plan.earlier))
    return record


def _base_fallback(git: Git, plan: Plan) -> str:
    # A new attempt builds on its parent; a baseline or re-run is itself what the branch stands on.
    parent = _first_parent(git, plan.commit) if plan.kind == "attempt" else None
    return parent or plan.commit


def _repeat_refusal(plan: Plan, ground: Ground) -> str | None:
    """Why an attempt may not be measured after the integrity checks passed: it repeats earlier ones."""
    if plan.kind != "attempt":
        return None
    # The preflight refuses a repeat before it is committed; this catches one committed
    # without it (`--no-verify`, pushed for a runner).
    repeat = repeats.refusal(list(plan.earlier), ground, plan.branch)
    return f"not run: {repeat}" if repeat is not None else None


def rejected(git: Git, plan: Plan, reason: str, rule: str | None = None) -> Record:
    """The record of a planned commit that is not run: one builder for every refusal after the commit
    (harness, ownership, data, repeat, a message that breaks the text rules, the GPU busy)."""
    return _of_plan(git, plan, REJECTED, time.time(), reason, rule=rule)


def _rejected(git: Git, plan: Plan, ground: Ground, reason: str) -> Record:
    return rejected(git, plan, reason, rule=ground.experiment.keep_rule)


def _not_run(git: Git, plan: Plan, ground: Ground, error: GitarError) -> Record:
    record = _rejected(git, plan, ground, f"could not run: {error.message}")
    record.status = CRASH
    record.error = {"type": "GitarError", "message": error.message, "traceback": []}
    return record


def _verdict(measured: integrity.Measurement, result: runner.RunResult, plan: Plan, policy: Policy,
             sigma: Sigma, earlier: list[float]) -> Verdict:
    if measured.status == REJECTED:
        return Verdict(REJECTED, measured.reason, plan.best.val_bpb if plan.best else None, None, policy.rule)
    verdict = judge(measured.status, measured.val_bpb, plan.best, policy, sigma,
                    _error_line(measured.error or result.crash), remeasure=plan.kind in ("rerun", VERIFY),
                    earlier=earlier)
    if plan.kind == VERIFY and verdict.status == KEEP and plan.best is not None and measured.val_bpb is not None:
        verdict = replace(verdict, reason=f"verify --rerun: re-measured {measured.val_bpb:.6f} against the recorded "
                                          f"mean {plan.best.val_bpb:.6f} of {plan.best.runs} run(s); "
                                          "not counted in the best's mean or the noise")
    notes = [n for n in (measured.mismatch, result.log_incomplete) if n]
    return replace(verdict, reason="; ".join([verdict.reason, *notes])) if notes else verdict


def _train(ws: Opened, plan: Plan, ground: Ground, snapshot: Path, run_key: str,
           pid: int | None, base: str) -> tuple[runner.RunResult, integrity.Measurement, dict[str, float]]:
    """One training run of the plan's commit in a fresh snapshot, then its measurement.

    The trainer runs in the sandbox (gitar/host/confine.py), timed by gitar: a run still going at
    its budget plus training.allowance_s is stopped and rejected, whatever it prints. With
    experiment.evaluate "harness" (the default) train.py saves its model in its output
    directory and gitar's evaluator measures it (integrity.measure) in a sandbox of its
    own; both share the run's hard timeout. An interrupt is recorded, then raised.
    Also returns where the time went (Record.timings).
    """
    t_setup = time.time()
    git, paths = ws.git, ws.paths
    log_path = paths.log(plan.commit, run_key)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    now = time.time()
    phases = _Phases(paths, state.Running(
        run_id=plan.run_id, commit=plan.commit, branch=plan.branch, description=plan.description,
        kind=plan.kind, best_commit=plan.best.commit if plan.best else None,
        move_branch=plan.kind == "attempt", started=now, budget_s=ground.training.budget_s,
        timeout_s=ground.experiment.timeout_s, log=str(log_path), pid=pid or os.getpid(),
        pid_start=start_time(pid or os.getpid()), seed=plan.seed, phase=state.STARTING, phase_started=now, evaluate=ground.experiment.evaluate))
    phases.running.save(paths)
    # The run sees the committed files only: later edits in the work tree cannot leak into it.
    git.export_tree(plan.commit, snapshot)
    harness = ground.experiment.evaluate == integrity.HARNESS
    evaluation = integrity.EvaluationRun.of(paths, log_path, run_key)
    evaluation.prepare()
    env = shared.confined_env({shared.WORKSPACE: str(git.root), shared.SEED: str(plan.seed),
                               shared.COMMIT: plan.commit, shared.RUN_ID: run_key, **paths.device_env()})
    if harness:
        env[shared.EXPORT_PATH] = str(evaluation.export_path)
    command = runner.expand_command(ground.experiment.command)
    confined = confine.for_training(git, ground, command, snapshot, evaluation.outbox, run_key)
    allowed_s = ground.training.budget_s + ground.training.allowance_s
    deadline_s = min(ground.experiment.timeout_s, allowed_s)

    try:
        result = runner.run_confined(
            command, cwd=snapshot, env=env, log_path=log_path, crash_path=evaluation.trainer_crash_path,
            timeout_s=deadline_s, on_start=phases.started(state.TRAINING, confined.label), confined=confined,
            needs_val_bpb=not harness)
        # setup_s ends where the runner's clock starts: the sandbox's own start-up counts as the trainer's.
        timings = {"setup_s": round(result.started_at - t_setup, 3), "trainer_s": round(result.wall_s, 3)}
        measured = _measurement(git, plan, ground, base, result, evaluation, allowed_s, deadline_s, harness,
                                phases, confined.label, run_key)
        if measured.evaluator_s is not None:
            handoff = time.time() - result.ended_at - measured.evaluator_s
            timings.update(handoff_s=round(max(handoff, 0.0), 3), evaluator_s=round(measured.evaluator_s, 3))
        phases.enter(state.JUDGING)
        return result, measured, timings
    except runner.RunInterrupted as interrupted:
        finish(ws, plan, _record(ws, plan, ground, interrupted.result, None, None))
        raise
    finally:
        evaluation.cleanup()


class _Phases:
    """The running state as the run moves through its phases; this process is its one writer."""

    def __init__(self, paths: Paths, running: state.Running) -> None:
        self.paths, self.running = paths, running

    def enter(self, phase: str, *, deadline: float | None = None, **changes: Any) -> None:
        self.running = self.running.with_(phase=phase, phase_started=time.time(), deadline=deadline, **changes)
        self.running.save(self.paths)

    def started(self, phase: str, sandbox: str) -> Callable[[runner.Started], None]:
        """The runner's on_start: the process recovery must find (trainer or evaluator), and its deadline."""
        def on_start(proc: runner.Started) -> None:
            self.enter(phase, deadline=proc.deadline, pgid=proc.pgid, trainer_pid=proc.pid,
                       trainer_start=proc.start_time, pid_namespace=proc.pid_namespace, sandbox=sandbox)
        return on_start


def _measurement(git: Git, plan: Plan, ground: Ground, base: str, result: runner.RunResult,
                 evaluation: integrity.EvaluationRun, allowed_s: float, deadline_s: float, harness: bool,
                 phases: _Phases, sandbox: str, run_key: str) -> integrity.Measurement:
    """The number of a finished training run: rejected past its time, train.py's own, or the harness's."""
    over = _over_budget(result, ground, allowed_s, deadline_s)
    if over is not None:
        return integrity.Measurement(REJECTED, None, None, number_or_none(result.summary.get("val_bpb")), reason=over)
    if not harness:
        return integrity.reported_only(result)
    if result.status != "ok":
        return integrity.Measurement(result.status, None, None, number_or_none(result.summary.get("val_bpb")))
    phases.enter(state.EXPORT)
    pinned = pins.load_data_pin(git, plan.branch)
    return integrity.measure(git, base, ground, result, evaluation, pinned,
                             ground.experiment.timeout_s - result.wall_s, run_id=run_key + "-eval",
                             on_start=phases.started(state.EVALUATION, sandbox),
                             device_env=phases.paths.device_env())


def _over_budget(result: runner.RunResult, ground: Ground, allowed_s: float, deadline_s: float) -> str | None:
    """Why a run trained longer than it may, by gitar's own clock; None if it kept to its time.

    gitar cannot see when train.py's training phase starts (anything train.py prints may be
    a lie), so it bounds the whole trainer: budget + allowance. A run stopped at that
    deadline, or one that ran past it, is rejected: its extra time could have been training.
    """
    stopped_at_deadline = result.status == "timeout" and deadline_s >= allowed_s - 1e-9
    if not stopped_at_deadline and not (result.status == "ok" and result.wall_s > allowed_s):
        return None
    t = ground.training
    return (f"over its time: the trainer ran {result.wall_s:.1f} s by gitar's clock, past the {t.mode} budget "
            f"{t.budget_s:g} s + training.allowance_s {t.allowance_s:g} s for start-up, compilation and export; "
            "stopped and not measured (make it finish within its budget, or raise the allowance in ground.json)")


def _repeat_noise(notebook: Notebook, record: Record) -> dict[str, Any] | None:
    """The spread of a re-measured commit's runs, this one included, for the record of the run."""
    if record.kind not in ("baseline", "rerun") or not record.ok:
        return None
    spread = commit_spread([*notebook.records(record.commit), record], record.branch)
    return spread.as_dict() if spread is not None else None


def finish(ws: Opened, plan: Plan, record: Record) -> Record:
    """Write the record, then move the branch; the result file lets `try`/`wait` find it.

    An attempt's branch is on the attempt while it runs. If something else moved it meanwhile,
    gitar leaves it where it is, and the record and the result line say so instead of
    claiming the branch is back at the best.
    """
    git, paths = ws.git, ws.paths
    ref = branch_ref(plan.branch)
    tip = git.ref_target(ref)
    if plan.kind == "attempt" and tip != plan.commit:
        record.worktree = moved_elsewhere(plan.branch, tip)
    ws.notebook.append(_stamped(plan, record))
    if plan.kind == "attempt" and record.status != KEEP and tip == plan.commit:
        back_to = plan.best.commit if plan.best else _first_parent(git, plan.commit)
        if back_to is not None:
            try:
                record.worktree = move_branch(git, plan.branch, plan.commit, back_to,
                                              f"gitar: {record.status} {plan.commit[:7]}, back to best {back_to[:7]}")
            except GitarError as e:
                # The record is written and says not kept, so the next gitar command moves the
                # branch (recovery); until then it stays on the attempt, never anywhere else.
                record.worktree = f"{PENDING}: {e.message}"
            if record.worktree == MOVED_ELSEWHERE:  # moved between the record and the move (the CAS failed)
                record.worktree = moved_elsewhere(plan.branch, git.ref_target(ref))
    elif plan.kind != VERIFY and tip == plan.commit and record.status == KEEP:
        ledger.branch_set(git, plan.branch, plan.commit)  # a keep, a baseline, a re-run: the branch stays here
    state.save_result(paths, record)
    return record


def _first_parent(git: Git, sha: str) -> str | None:
    parents = git.commit(sha).parent_ids
    return str(parents[0]) if parents else None




def _int(v: object) -> int | None:
    return int(v) if isinstance(v, (int, float)) else None


def _error_line(crash: dict[str, object] | None) -> str:
    if not crash:
        return ""
    kind, msg = str(crash.get("type", "")), str(crash.get("message", "")).strip()
    line = f"{kind}: {msg}" if kind and msg else kind or msg
    return line.splitlines()[0][:300] if line else ""


def _record(ws: Opened, plan: Plan, ground: Ground, result: runner.RunResult, verdict: Verdict | None,
            measured: integrity.Measurement | None, sigma: float | None = None) -> Record:
    s = result.summary
    # A run that ended without its summary (timeout, crash, abort): how far its log says it got.
    last = runner.read_progress(result.log_path) if _int(s.get("num_steps")) is None else None
    status = verdict.status if verdict else ABORTED
    failed = measured is not None and measured.status != "ok"
    reason = verdict.reason if verdict else "gitar was interrupted during the run; the process group was killed"
    platform: dict[str, str] = {k: str(s[k]) for k in ("device", "dtype", "attention") if k in s}
    counted = measured is not None and not failed and measured.val_bpb is not None
    bytes_rule = _bytes_rule(measured, s) if counted else None
    return _of_plan(
        ws.git, plan, status, result.started_at, reason,
        val_bpb=measured.val_bpb if measured is not None and not failed else None,
        val_bpb_source=measured.source if measured is not None and not failed else None,
        reported_val_bpb=measured.reported if measured is not None else None,
        bytes_rule=bytes_rule,
        evaluation=measured.evaluation if measured is not None else None,
        data_sha256=measured.data_sha256 if measured is not None else None,
        delta=verdict.delta if verdict else None, rule=ground.experiment.keep_rule,
        margin=verdict.margin if verdict else None,
        peak_vram_mb=number_or_none(s.get("peak_vram_mb")), training_seconds=number_or_none(s.get("training_seconds")),
        total_seconds=number_or_none(s.get("total_seconds")), wall_seconds=round(result.wall_s, 3),
        mfu_percent=number_or_none(s.get("mfu_percent")), total_tokens_M=number_or_none(s.get("total_tokens_M")),
        num_steps=_int(s.get("num_steps")), num_params_M=number_or_none(s.get("num_params_M")),
        last_step=last.step if last is not None else None, last_train_s=last.train_s if last is not None else None,
        sigma=sigma, best_tokens_per_s=_best_rate(ws.notebook, plan),
        depth=_int(s.get("depth")), ended=numbers.iso_time(result.ended_at), platform=platform or None,
        log=str(result.log_path), error=_failure(result, measured), sandbox=result.sandbox, limits=result.limits,
    )


def _of_plan(git: Git, plan: Plan, status: str, started: float, reason: str | None, **own: Any) -> Record:
    """A record of the plan's run (run_record.build): what the plan says of it, and the best it was judged against."""
    return run_record.build(
        git, status, commit=plan.commit, branch=plan.branch, description=plan.description, run_id=plan.run_id,
        kind=plan.kind, started=started, reason=reason, hypothesis=plan.hypothesis,
        parent=_first_parent(git, plan.commit), seed=plan.seed,
        best_before=plan.best.val_bpb if plan.best else None, best_commit=plan.best.commit if plan.best else None,
        **own)


def _bytes_rule(measured: integrity.Measurement | None, summary: dict[str, float | int | str]) -> str | None:
    """The token-bytes rule val_bpb was computed with: the harness's word for a harness number,
    train.py's summary line for a reported one."""
    if measured is not None and measured.source == integrity.HARNESS:
        rule = (measured.evaluation or {}).get("bytes_rule")
    else:
        rule = summary.get("bytes_rule")
    return rule if isinstance(rule, str) else None


def _best_rate(notebook: Notebook, plan: Plan) -> float | None:
    """The mean tokens/s of the best's runs (train.py's summaries), which this run's is compared with."""
    if plan.best is None:
        return None
    rates = [r for r in (x.tokens_per_s for x in best_of(notebook.records(plan.best.commit), plan.branch))
             if r is not None]
    return round(math.fsum(rates) / len(rates), 1) if rates else None


def _failure(result: runner.RunResult, measured: integrity.Measurement | None) -> dict[str, object] | None:
    if result.status != "ok":
        return _error(result)
    return measured.error if measured is not None else None  # the export or the evaluation failed


def _error(result: runner.RunResult) -> dict[str, object]:
    crash = dict(result.crash or {})
    if result.status == "timeout":
        crash.setdefault("type", "Timeout")
    tb = crash.get("traceback")
    if isinstance(tb, list):
        crash["traceback"] = [str(x) for x in tb][-15:]
    elif not tb:
        crash["traceback"] = result.log_tail.splitlines()[-15:]
    return crash
