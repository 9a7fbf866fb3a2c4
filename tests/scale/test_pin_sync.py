"""Branch bases and data pins travel with `gitar sync`; none is ever overwritten."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitar.sharing.sync import sync
from gitar.store import pins
from gitar.store.git import Git
from gitar.store.pins import load_data_pin, save_data_pin
from gitar.store.refs import base_ref, data_ref
from testing.lab import BRANCH, Lab, commit_train, run_job

PIN = {"data/shard_06542.parquet": "ab" * 32, "tokenizer/manifest.json": "cd" * 32}


def test_the_base_and_data_pin_reach_the_remote_and_a_runner(lab: Lab) -> None:
    agent = lab.clone("agent")
    assert agent.gitar("init", "t1").returncode == 0
    git = Git.discover(agent.root)
    base = git.ref_target(base_ref(BRANCH))
    assert base is not None
    save_data_pin(git, BRANCH, PIN)
    result = sync(git, "origin")
    assert lab.remote_ref(base_ref(BRANCH)) == base
    assert lab.remote_ref(data_ref(BRANCH)) == git.ref_target(data_ref(BRANCH))

    runner = lab.clone("runner")
    rgit = Git.discover(runner.root)
    adopted = sync(rgit, "origin", push=False)
    assert rgit.ref_target(base_ref(BRANCH)) == base
    assert load_data_pin(rgit, BRANCH) == PIN
    assert any("adopted" in line for line in adopted.lines()), adopted.lines()
    assert not any("adopted" in line for line in result.lines())


def test_a_runner_measures_from_the_agents_base(lab: Lab) -> None:
    """A user changes the harness on their own main, then starts a branch there: the base is that commit.

    The runner never saw that main. With the base shared it measures the branch from it (its
    baseline, then the experiment); without, it would take the remote main as the start and
    reject every commit after it as a harness change.
    """
    agent = lab.clone("agent")
    (agent.root / "prepare.py").write_text('"""The harness, as this user wants it."""\nEVAL_TOKENS = 1\n')
    agent.git("commit", "-qam", "our harness")
    harness = agent.head()
    assert agent.gitar("init", "t1").returncode == 0
    experiment = commit_train(agent, 0.5, "an experiment")
    sync(Git.discover(agent.root), "origin")
    assert lab.remote_ref(base_ref(BRANCH)) == harness

    run_job(lab.clone("runner"))
    notes = lab.remote_notes()
    assert [r["status"] for r in notes[harness]] == ["keep"]  # the baseline
    assert [(r["status"], r["best_commit"]) for r in notes[experiment]] == [("keep", harness)]


def test_two_bases_for_one_branch_are_both_kept_and_reported(lab: Lab) -> None:
    first = lab.clone("first")
    assert first.gitar("init", "t1").returncode == 0
    sync(Git.discover(first.root), "origin")
    remote_base = lab.remote_ref(base_ref(BRANCH))

    other = lab.clone("other")
    ogit = Git.discover(other.root)
    commit_train(other, 0.9, "another start on main")
    ogit.run("update-ref", base_ref(BRANCH), ogit.resolve("HEAD"))
    result = sync(ogit, "origin")
    assert ogit.ref_target(base_ref(BRANCH)) == ogit.resolve("HEAD")  # its own, not overwritten
    assert lab.remote_ref(base_ref(BRANCH)) == remote_base  # nor the remote's
    assert any(line.startswith("warning:") and "base" in line for line in result.lines()), result.lines()


def test_a_base_another_process_made_first_stands(hermetic: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first runs of one branch race to record its base: the loser takes the winner's, never moves it."""
    root = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    for message in ("the harness", "an agent's commit"):
        subprocess.run(["git", "-C", str(root), "commit", "-q", "--allow-empty", "-m", message], check=True)
    git = Git.discover(root)
    first, second = git.resolve("HEAD~1"), git.resolve("HEAD")
    pins.record_base(git, BRANCH, first)  # the other process, between this one's read and its write
    looked = iter([None])
    real = pins.base_commit
    monkeypatch.setattr(pins, "base_commit", lambda g, b: next(looked, real(g, b)))
    assert pins.ensure_base(git, BRANCH, second) == first
    assert git.ref_target(base_ref(BRANCH)) == first
