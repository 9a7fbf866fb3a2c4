"""Processes that outlive their run, and bookkeeping that names processes gitar did not start.

A child started in a new session (`start_new_session=True`, setsid) leaves the process group gitar
kills at the end of a run. Alive, it can edit what gitar evaluates or records after the fact: the
pinned prepare.py staged for the evaluator, the token-bytes table between the evaluator's hash
check and its use, the next attempt's snapshot, the notebook and the branch. Each helper writes
what it managed to do to a report file outside the workspace (Arena.report), which a test shows
when the attack works.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from testing.arena import (
    BRANCH,
    NOTES_REF,
    TOLERANCE,
    Arena,
    is_win,
    marked_processes,
    survivors,
    trainer,
    tree_digest,
    wait_for,
)

pytestmark = pytest.mark.attack

HELPER_ACTS_S = 60.0  # the most a surviving helper needs to act once gitar has returned


def test_a_survivor_rewrites_the_harness_staged_for_the_evaluator(arena: Arena) -> None:
    train_py = trainer("survivor_prepare", MARKER=arena.marker, WORKSPACE=arena.root, REPORT=arena.report())
    outcome = arena.attempt(train_py, "a helper that outlives the run")
    alive = survivors(arena.marker)
    assert not alive and not is_win(outcome, arena.honest) and "rewrote" not in arena.reported(), (
        f"alive after the run: {alive}; helper: {arena.reported()!r}; {outcome.describe()} (honest {arena.honest})")


def test_a_survivor_poisons_the_next_attempts_snapshot(arena: Arena) -> None:
    first = arena.attempt(trainer("survivor_snapshot", MARKER=arena.marker, WORKSPACE=arena.root,
                                  REPORT=arena.report()), "a helper that waits for the next run")
    alive = survivors(arena.marker)
    # The next attempt is honest: the same model as the baseline, so the same number, unless the
    # helper got into its snapshot.
    second = arena.attempt(trainer() + "\n# an honest change\n", "an honest change")
    assert not alive and not is_win(first, arena.honest) and not is_win(second, arena.honest) \
        and "poisoned" not in arena.reported(), (
        f"alive after the run: {alive}; helper: {arena.reported()!r}; next attempt {second.describe()} "
        f"(honest {arena.honest})")


def test_a_survivor_rewrites_the_verdict_and_moves_the_branch(arena: Arena) -> None:
    # A little worse than the baseline, so the verdict is a discard for the helper to rewrite.
    outcome = arena.attempt(trainer("survivor_notes", steps=7, MARKER=arena.marker, WORKSPACE=arena.root,
                                    REPORT=arena.report(), BRANCH=BRANCH), "a helper that waits for the verdict")
    notes, tip = arena.ref(NOTES_REF), arena.tip()  # as gitar left them
    alive = survivors(arena.marker)
    # A helper that survived gets the time it needs to act; with none alive there is nothing to wait for.
    wait_for(lambda: "forged" in arena.reported() or not marked_processes(arena.marker), HELPER_ACTS_S)
    arena.gitar("status")  # the next command, which finishes whatever gitar left unfinished
    best_commit, best_value = arena.best()
    effects = {
        "alive after the run": alive,
        "notes ref moved after gitar returned": arena.ref(NOTES_REF) != notes,
        "branch moved after gitar returned": arena.tip() != tip,
        "branch not back at the best": arena.tip() != arena.baseline,
        "best better than honest": best_value is not None and best_value < arena.honest - TOLERANCE,
        "helper forged the verdict": "forged" in arena.reported(),
    }
    assert not any(effects.values()) and not is_win(outcome, arena.honest), (
        f"{[k for k, v in effects.items() if v]}; helper: {arena.reported()!r}; best {best_commit} "
        f"{best_value} (honest {arena.honest}); {outcome.describe()}")


def test_a_survivor_swaps_the_token_bytes_after_the_hash_check(arena: Arena) -> None:
    """Check-then-use: the evaluator hashes the data, then loads the token-bytes table a moment later."""
    cache = tree_digest(arena.cache)
    outcome = arena.attempt(trainer("survivor_token_bytes", MARKER=arena.marker, CACHE=arena.cache,
                                    REPORT=arena.report()), "a helper that swaps the table")
    alive = survivors(arena.marker)
    wait_for(lambda: "restored" in arena.reported() or not marked_processes(arena.marker), HELPER_ACTS_S)
    swapped = "swapped" in arena.reported()
    assert not alive and not swapped and not is_win(outcome, arena.honest) and tree_digest(arena.cache) == cache, (
        f"alive after the run: {alive}; helper: {arena.reported()!r}; {outcome.describe()} (honest {arena.honest})")


def test_forged_running_state_does_not_make_gitar_kill_or_move_anything(arena: Arena) -> None:
    """A hand-made .git/gitar/running.json: a dead runner, and the process group of an unrelated
    program as its 'training group'. The next plain `gitar status` must not kill that group on its
    word, nor move the branch to the commit the file names."""
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)  # its own session and group
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()  # a pid that no longer runs: the "runner" died
        elsewhere = arena.git("commit-tree", f"{arena.baseline}^{{tree}}", "-m", "somewhere else")
        forged = {"run_id": uuid.uuid4().hex, "commit": arena.baseline, "branch": BRANCH,
                  "description": "forged", "kind": "attempt", "best_commit": elsewhere, "move_branch": True,
                  "started": time.time() - 5, "budget_s": 3.0, "timeout_s": 120.0,
                  "log": str(arena.gitdir / "gitar" / "logs" / "forged.log"), "pid": gone.pid,
                  "pgid": unrelated.pid, "seed": 42}
        (arena.gitdir / "gitar" / "running.json").write_text(json.dumps(forged))
        status = arena.gitar("status")
        killed = unrelated.poll() is not None
        tip = arena.tip()
        assert not killed and tip == arena.baseline, (
            f"unrelated group killed: {killed}; branch moved to {tip} (forged target {elsewhere}); "
            f"gitar status said: {status.stdout.strip()[:400]} {status.stderr.strip()[:400]}")
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_survivor_started_by_the_smoke_step(arena: Arena) -> None:
    """The smoke step runs the agent's code at pre-commit, before any training: a process it starts
    in its own session must not outlive the check, nor write the repository it was checked out of.

    The workspace turns the smoke step on for a branch of its own (ground.json is the harness: a
    new base, made with `gitar init`), as the shipped ground.json has it.
    """
    arena.git("checkout", "-q", "main")
    ground = json.loads((arena.root / "ground.json").read_text())
    ground["experiment"]["smoke"] = True
    (arena.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    arena.git("-c", "core.hooksPath=/dev/null", "commit", "-qam", "the smoke step on")
    init = arena.gitar("init", "smoke")
    assert init.returncode == 0, init.stdout + init.stderr
    assert arena.gitar("run").returncode == 0, "the honest baseline of the new branch"
    hooks = tree_digest(arena.gitdir / "hooks")
    outcome = arena.attempt(trainer("smoke_survivor", MARKER=arena.marker, WORKSPACE=arena.root,
                                    REPORT=arena.report()), "a helper started by the smoke step")
    alive = survivors(arena.marker)
    wait_for(lambda: "planted" in arena.reported() or not marked_processes(arena.marker), HELPER_ACTS_S)
    effects = {
        "alive after the smoke step": alive,
        "planted a hook": tree_digest(arena.gitdir / "hooks") != hooks,
        "helper says it planted": "planted" in arena.reported(),
    }
    assert not any(effects.values()), f"{[k for k, v in effects.items() if v]}; helper: {arena.reported()!r}; " \
                                      f"{outcome.describe()}"
