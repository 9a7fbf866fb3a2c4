"""Writing into gitar's own environment from train.py: the interpreter's site-packages, gitar's
source, git's config and hooks, the notebook and the branch.

Every target is the arena's private copy (testing/arena.py): the venv, the gitar package,
the repository. The invariant is that the copy is untouched after the run and nothing better than
the honest number was kept.
"""

from __future__ import annotations

import pytest

from testing.arena import (
    BRANCH,
    NOTES_REF,
    TOLERANCE,
    Arena,
    file_digest,
    is_win,
    trainer,
    tree_digest,
)

pytestmark = pytest.mark.attack


def test_a_pth_file_in_site_packages_rewrites_the_evaluators_result(arena: Arena) -> None:
    before = tree_digest(arena.site_packages)
    outcome = arena.attempt(trainer("pth_hook"), "a .pth file for every later interpreter")
    written = sorted(p.name for p in arena.site_packages.iterdir())
    assert tree_digest(arena.site_packages) == before and not is_win(outcome, arena.honest), (
        f"site-packages now: {written}; {outcome.describe()} (honest {arena.honest})")


def test_train_py_edits_gitars_evaluator(arena: Arena) -> None:
    before = tree_digest(arena.gitar_source)
    outcome = arena.attempt(trainer("gitar_source"), "a better evaluator")
    edited = tree_digest(arena.gitar_source) != before
    assert not edited and not is_win(outcome, arena.honest), (
        f"gitar source edited: {edited}; {outcome.describe()} (honest {arena.honest})")


def test_train_py_turns_the_hooks_off(arena: Arena) -> None:
    """core.hooksPath /dev/null: every later plain `git commit` skips the loop; and a planted hook."""
    config, hooks = file_digest(arena.gitdir / "config"), tree_digest(arena.gitdir / "hooks")
    outcome = arena.attempt(trainer("git_config_hooks", WORKSPACE=arena.root), "no more hooks")
    hooks_path = arena.git("config", "--get", "core.hooksPath", check=False)
    assert file_digest(arena.gitdir / "config") == config and tree_digest(arena.gitdir / "hooks") == hooks, (
        f"core.hooksPath={hooks_path!r}; hooks: {sorted(p.name for p in (arena.gitdir / 'hooks').iterdir())}; "
        f"{outcome.describe()}")


def test_erasing_the_notebook_does_not_make_a_worse_attempt_the_best(arena: Arena) -> None:
    notes = arena.ref(NOTES_REF)
    baseline_runs = {r.get("run_id") for r in arena.records(arena.baseline)}
    # The attack's own model is a little worse: discarded, so no keep of its own refills the notebook.
    first = arena.attempt(trainer("erase_notes", steps=7, WORKSPACE=arena.root), "forget the past")
    # Then a plainly worse model (a quarter of the counting) with no attack in it.
    worse = arena.attempt(trainer(steps=2), "count less")
    after = arena.ref(NOTES_REF)
    rewound = after is None or notes is None or not arena.is_ancestor(notes, after)
    lost = not baseline_runs <= {r.get("run_id") for r in arena.records(arena.baseline)}
    kept_worse = worse.status == "keep"
    assert not lost and not kept_worse and not is_win(first, arena.honest), (
        f"baseline record lost: {lost}; notes ref {notes} -> {after} (rewound: {rewound}); "
        f"worse attempt {worse.describe()} (honest {arena.honest})")


def test_a_forged_keep_committed_from_inside_the_run(arena: Arena) -> None:
    """train.py commits on top of the best, notes that commit as a keep at a tenth of the number,
    and moves the branch onto it; gitar's own reset then finds the branch elsewhere."""
    outcome = arena.attempt(trainer("forged_keep", steps=7, WORKSPACE=arena.root, BRANCH=BRANCH), "a forged keep")
    arena.gitar("status")  # the next command, which finishes a reset gitar left pending
    tip = arena.tip()
    best_commit, best_value = arena.best()
    better = best_value is not None and best_value < arena.honest - TOLERANCE
    assert tip == arena.baseline and not better and not is_win(outcome, arena.honest), (
        f"branch at {tip} (best {arena.baseline}); gitar best: {best_commit} {best_value} "
        f"(honest {arena.honest}); {outcome.describe()}")
