"""`gitar try --remote`: preflight here, measure on the remote's runner, read the verdict back here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing.lab import BRANCH, Lab, run_job
from testing.trainers import fake_train
from testing.workspace import Workspace


def _agent(lab: Lab, name: str = "agent", *, user_hook: bool = False) -> Workspace:
    agent = lab.clone(name)
    if user_hook:
        agent.add_user_hook()
    assert agent.gitar("init", "t1").returncode == 0
    return agent


def _no_local_run(agent: Workspace) -> bool:
    logs = agent.root / ".git" / "gitar" / "logs"
    return not logs.exists() or not any(logs.iterdir())


@pytest.mark.parametrize("user_hook", [False, True], ids=["in-process", "through-hooks"])
def test_no_wait_queues_the_commit_and_wait_reads_the_verdict(lab: Lab, user_hook: bool) -> None:
    agent = _agent(lab, user_hook=user_hook)
    agent.write_train(0.5)
    proc = agent.gitar("try", "--remote", "origin", "--no-wait", "--json", "halve it")
    assert proc.returncode == 0, proc.stderr
    queued = json.loads(proc.stdout)
    sha = agent.head()
    # Every --json outcome carries its exit code and its line (the same words the plain output says).
    assert {k: queued[k] for k in ("status", "commit", "remote", "branch", "exit_code")} == {
        "status": "queued", "commit": sha, "remote": "origin", "branch": BRANCH, "exit_code": 0}
    assert set(queued) == {"status", "commit", "remote", "branch", "exit_code", "message"}
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == sha
    assert lab.remote_ref(f"refs/gitar/attempts/{sha}") == sha
    assert lab.remote_ref(f"refs/gitar/base/{BRANCH}") is not None
    assert _no_local_run(agent) and agent.records(sha) == []
    if user_hook:
        assert (agent.root / ".git" / "user-hook-ran").exists()

    run_job(lab.clone("runner"))
    waited = agent.gitar("wait", "--remote", "origin", "--poll", "0.1")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith(f"keep {sha[:7]} val_bpb 0.500000"), waited.stdout
    assert [r["status"] for r in agent.records(sha)] == ["keep"]
    assert _no_local_run(agent)


def test_try_remote_waits_and_a_discard_moves_the_local_branch_back(lab: Lab) -> None:
    agent = _agent(lab)
    agent.write_train(0.5)
    assert agent.gitar("try", "--remote", "origin", "--no-wait", "good").returncode == 0
    best = agent.head()
    run_job(lab.clone("runner"))
    assert agent.gitar("wait", "--remote", "origin", "--poll", "0.1").returncode == 0

    agent.write_train(0.9)
    waiting = subprocess.Popen([sys.executable, "-m", "gitar", "try", "--remote", "origin", "--poll", "0.2", "worse"],
                               cwd=agent.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ))
    deadline = time.time() + 60
    while lab.remote_ref(f"refs/heads/{BRANCH}") == best and time.time() < deadline:
        time.sleep(0.1)  # pushed once the remote branch moves
    assert waiting.poll() is None, waiting.communicate()
    run_job(lab.clone("runner2"))
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1, err
    assert out.startswith("discard ") and f"branch back at {best[:7]}" in out, out
    assert agent.tip() == best
    assert agent.git("status", "--porcelain", "--untracked-files=no").stdout == ""
    assert (agent.root / "train.py").read_text() == fake_train(0.5)  # the work tree followed the branch


def test_a_refused_idea_is_never_pushed(lab: Lab) -> None:
    agent = _agent(lab)
    agent.write_train(0.5, mode="smoke-fail")
    before = lab.remote_ref(f"refs/heads/{BRANCH}")
    proc = agent.gitar("try", "--remote", "origin", "--no-wait", "broken")
    assert proc.returncode == 2 and "smoke step failed" in proc.stderr, proc.stderr
    assert lab.remote_ref(f"refs/heads/{BRANCH}") == before


@pytest.mark.parametrize("args, needle", [
    (["--remote", "nowhere"], "no remote named 'nowhere'"),
    (["--remote", "origin", "--detach"], "--no-wait"),
    (["--no-wait"], "--remote"),
])
def test_bad_remote_arguments(lab: Lab, args: list[str], needle: str, tmp_path: Path) -> None:
    agent = _agent(lab)
    agent.write_train(0.5)
    head = agent.head()
    proc = agent.gitar("try", *args, "desc")
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and agent.head() == head
