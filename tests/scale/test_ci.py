"""The CI runner: pushed commits measured in order, branch moves pushed back, killed jobs resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from testing.lab import BRANCH, JOB_SCRIPT, Lab, commit_train, job, run_job


def _by_commit(lab: Lab) -> dict[str, list[dict[str, object]]]:
    return lab.remote_notes()


def test_pushed_commits_are_measured_in_order_against_the_best(lab: Lab) -> None:
    agent = lab.agent()
    base = agent.head()
    c1 = commit_train(agent, 0.90, "better")
    c2 = commit_train(agent, 0.95, "worse than c1")
    c3 = commit_train(agent, 0.85, "better again, on top of c2")
    agent.git("push", "-q", "origin", BRANCH)
    runner = lab.clone("runner")

    out = run_job(runner)

    notes = _by_commit(lab)
    assert [(r["status"], r["kind"]) for r in notes[base]] == [("keep", "baseline")]
    assert [r["status"] for r in notes[c1]] == ["keep"]
    assert notes[c1][0]["best_commit"] == base
    # c2 is judged against c1 (the best at that moment), not against its own parent's record.
    assert [(r["status"], r["best_commit"]) for r in notes[c2]] == [("discard", c1)]
    assert [(r["status"], r["best_commit"], r["best_before"]) for r in notes[c3]] == [("keep", c1, 0.9)]
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == c3
    assert out.count("\n") == 4  # one result line per measured commit

    # A discard moves the remote branch back (a push with a lease), its code stays pinned.
    c4 = commit_train(agent, 0.99, "much worse")
    agent.git("push", "-q", "origin", BRANCH)
    run_job(runner)
    assert [r["status"] for r in _by_commit(lab)[c4]] == ["discard"]
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == c3
    for sha in (c1, c2, c3, c4):
        assert lab.remote_ref(f"refs/gitar/attempts/{sha}") == sha

    # Nothing new: the job measures nothing and writes nothing.
    before = _by_commit(lab)
    assert run_job(runner) == ""
    assert _by_commit(lab) == before

    # The agent gets every record; its tip c4 was discarded, so its sync does not push it back.
    proc = agent.gitar("sync")
    assert proc.returncode == 0, proc.stderr
    assert "measured and not kept" in proc.stdout
    assert len(agent.all_records()) == 5
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == c3


def test_a_fresh_runner_clone_resumes_from_the_records(lab: Lab) -> None:
    agent = lab.agent()
    c1 = commit_train(agent, 0.9, "better")
    agent.git("push", "-q", "origin", BRANCH)
    run_job(lab.clone("runner1"))
    c2 = commit_train(agent, 0.8, "better still")
    agent.git("push", "-q", "origin", BRANCH)
    run_job(lab.clone("runner2"))  # another machine: it knows the past from the notes alone
    notes = _by_commit(lab)
    assert [(r["status"], r["best_commit"]) for r in notes[c2]] == [("keep", c1)]
    assert sum(len(v) for v in notes.values()) == 3


def test_killed_runner_leaves_nothing_half_pushed_and_the_next_job_measures_the_commit(lab: Lab) -> None:
    agent = lab.agent()
    base = agent.head()
    c1 = commit_train(agent, 0.9, "fast and better")
    c2 = commit_train(agent, 0.8, "slow", mode="sleep", sleep_s=3.0)
    agent.git("push", "-q", "origin", BRANCH)
    runner = lab.clone("runner")
    assert job(runner, "fetch").returncode == 0

    env = dict(os.environ, GITAR_BRANCH=BRANCH, GITAR_PYTHON=__import__("sys").executable)
    measuring = subprocess.Popen(["bash", str(JOB_SCRIPT), "measure"], cwd=runner.root, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    running = runner.root / ".git" / "gitar" / "running.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = json.loads(running.read_text()) if running.exists() else {}
        if state.get("commit") == c2 and state.get("pgid"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the runner never started c2")
    os.killpg(measuring.pid, signal.SIGKILL)  # the job's shell and gitar; training has its own group
    measuring.wait()

    # What the killed job finished is pushable; the run it was in left no record and moved nothing.
    assert job(runner, "push").returncode == 0
    notes = _by_commit(lab)
    assert [r["status"] for r in notes[c1]] == ["keep"]
    assert c2 not in notes
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == c2

    out = run_job(runner)  # the next job: recovery records the abort, then c2 is measured again
    assert "keep" in out
    notes = _by_commit(lab)
    assert sorted(r["status"] for r in notes[c2]) == ["aborted", "keep"]
    assert [r["status"] for r in notes[c1]] == ["keep"]  # no duplicate for a completed run
    assert [r["status"] for r in notes[base]] == ["keep"]
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == c2
    assert not running.exists()


def test_gitar_run_measures_a_descendant_chain_of_unmeasured_commits(lab: Lab) -> None:
    ws = lab.clone("solo")
    proc = ws.gitar("init", "t1")
    assert proc.returncode == 0, proc.stderr
    assert ws.gitar("run").returncode == 0  # the baseline, 1.0
    base = ws.head()
    ws.git("switch", "-q", "--detach")
    c1 = commit_train(ws, 1.1, "worse")
    c2 = commit_train(ws, 0.9, "better than the baseline")
    ws.git("switch", "-q", BRANCH)

    proc = ws.gitar("run", c2)
    assert proc.returncode == 1, proc.stderr  # one of the two was not kept
    assert [ln.split()[:2] for ln in proc.stdout.splitlines()] == [["discard", c1[:7]], ["keep", c2[:7]]]
    assert [(r["status"], r["best_commit"]) for r in ws.records(c1)] == [("discard", base)]
    assert [(r["status"], r["best_commit"]) for r in ws.records(c2)] == [("keep", base)]
    assert ws.tip() == c2

    again = ws.gitar("run", c1)
    assert again.returncode == 2 and "neither the tip" in again.stderr
