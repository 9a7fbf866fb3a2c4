"""The notebook against anything that writes git directly: gitar's ledger, refusals, signatures, reruns.

Each attack here worked before the ledger: the notes ref deleted or rewound (the next, worse
attempt became the "baseline" and was kept), a commit made outside gitar with a forged keep
note (later attempts judged against the fake best, verify silent about it), and a branch
moved during a run while the result line said "branch back at …". The fake trainer's
workspace (tests/conftest.py): real git, real notes, a trainer that prints its number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitar import shared
from gitar.store import signing
from gitar.store.records import Record, record_dict
from testing.workspace import Workspace, make_workspace

BRANCH = "autoresearch/t1"
NOTES = "refs/notes/gitar"


def try_(ws: Workspace, val_bpb: float, description: str) -> subprocess.CompletedProcess[str]:
    ws.write_train(val_bpb)
    return ws.gitar("try", description)


def baseline_and_keep(ws: Workspace) -> tuple[str, str]:
    """The baseline (1.0) and a kept attempt (0.9); returns their commits."""
    assert ws.gitar("run").returncode == 0
    base = ws.head()
    proc = try_(ws, 0.9, "better")
    assert proc.returncode == 0 and proc.stdout.startswith("keep "), proc.stdout + proc.stderr
    return base, ws.head()


def one_line_refusal(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def forge_commit(ws: Workspace, val_bpb_printed: float, val_bpb_claimed: float) -> str:
    """A commit made outside gitar (no hooks) with a keep note written by `git notes`; the branch moves onto it."""
    [template] = [r for r in ws.records() if r["status"] == "keep"]
    ws.write_train(val_bpb_printed)
    ws.git("add", "train.py")
    ws.git("-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", "forged")
    sha = ws.head()
    fake = dict(template, commit=sha, val_bpb=val_bpb_claimed, reported_val_bpb=val_bpb_claimed,
                run_id="f" * 32, description="forged", parent=str(template["commit"]),
                best_before=template.get("val_bpb"), delta=-0.1, kind="attempt")
    ws.git("notes", "--ref", NOTES, "add", "-m", json.dumps(fake), sha)
    return sha


# ---------------------------------------------------------------------------
# 1. The notes ref deleted or rewound
# ---------------------------------------------------------------------------


def test_a_deleted_notebook_is_refused_not_taken_for_a_fresh_branch(workspace: Workspace) -> None:
    ws = workspace
    _, kept = baseline_and_keep(ws)
    last = ws.git("rev-parse", NOTES).stdout.strip()
    ws.git("update-ref", "-d", NOTES)
    proc = try_(ws, 1.1, "worse, after the notebook was erased")
    line = one_line_refusal(proc)
    assert line == (f"gitar: error: {NOTES} was deleted outside gitar (gitar last wrote {last[:7]}); restore it with "
                    f"`git update-ref {NOTES} {last}` or accept the loss with `gitar verify --accept`")
    assert ws.head() == kept, "nothing may be committed when gitar refuses"
    ws.git("update-ref", NOTES, last)  # the fix the line names
    proc = ws.gitar("try", "worse, after the notebook was restored")
    assert proc.returncode == 1 and proc.stdout.startswith("discard "), proc.stdout + proc.stderr
    assert ws.head() == kept


def test_a_rewound_notebook_is_refused(workspace: Workspace) -> None:
    ws = workspace
    _, kept = baseline_and_keep(ws)
    last = ws.git("rev-parse", NOTES).stdout.strip()
    ws.git("update-ref", NOTES, f"{NOTES}~1")  # the keep's record is gone from the ref
    assert ws.records(kept) == []
    line = one_line_refusal(try_(ws, 1.1, "worse, after the rewind"))
    assert f"{NOTES} was rewound or replaced outside gitar" in line and f"`git update-ref {NOTES} {last}`" in line
    # gitar run (the baseline of a branch that seems to have none) refuses the same way.
    ws.git("checkout", "-q", "--", "train.py")
    assert "was rewound or replaced outside gitar" in one_line_refusal(ws.gitar("run"))
    verify = ws.gitar("verify")
    assert verify.returncode == 1 and "was rewound or replaced outside gitar" in verify.stdout


def test_accepting_a_deleted_notebook_says_what_it_accepts_then_judging_goes_on(workspace: Workspace) -> None:
    ws = workspace
    baseline_and_keep(ws)
    ws.git("update-ref", "-d", NOTES)
    proc = ws.gitar("verify", "--accept")
    assert proc.stdout.splitlines()[0].startswith(f"accepted: {NOTES} is gone (gitar last left it at ")
    assert "refs/gitar/ledger/notes" in proc.stdout  # the old notebook stays reachable: nothing is lost
    proc = try_(ws, 1.1, "after accepting")
    assert proc.returncode == 0 and "(baseline)" in proc.stdout, proc.stdout + proc.stderr


def test_a_best_record_removed_with_git_notes_is_refused(workspace: Workspace) -> None:
    ws = workspace
    _, kept = baseline_and_keep(ws)
    ws.git("notes", "--ref", NOTES, "remove", kept)  # a descendant notes commit: only the ledger sees the loss
    line = one_line_refusal(try_(ws, 1.1, "worse, after the best's record was removed"))
    assert line.startswith(f"gitar: error: 1 record line gitar wrote on {kept[:7]} is gone from its note (run ")
    verify = ws.gitar("verify")
    assert verify.returncode == 1
    assert "a record gitar wrote here is gone from the notes: removed or edited outside gitar" in verify.stdout
    accepted = ws.gitar("verify", "--accept")
    assert f"accepted: record {kept[:7]} (run " in accepted.stdout and "is gone from the notes (it was here)" \
        in accepted.stdout
    assert "is gone from the notes" not in ws.gitar("verify").stdout


def test_a_commit_without_a_verdict_on_top_of_the_best_is_refused(workspace: Workspace) -> None:
    ws = workspace
    _, kept = baseline_and_keep(ws)
    ws.write_train(1.05)
    ws.git("-c", "core.hooksPath=/dev/null", "commit", "-qam", "hooks off")  # never measured
    unmeasured = ws.head()
    line = one_line_refusal(try_(ws, 1.1, "judged against no best at all?"))
    assert line.startswith(f"gitar: error: {BRANCH} is at {unmeasured[:7]}, which has no verdict: gitar left the "
                           f"branch at its best {kept[:7]} (val_bpb 0.900000)")
    assert "gitar: error: " in one_line_refusal(ws.gitar("run"))  # nor is it a "baseline" for gitar run
    ws.git("checkout", "-q", "--", "train.py")  # the refused idea's edit
    ws.git("reset", "-q", "--keep", kept)  # the way out the line names
    proc = ws.gitar("run", unmeasured)
    assert proc.returncode == 1 and proc.stdout.startswith(f"discard {unmeasured[:7]}"), proc.stdout + proc.stderr


def test_a_forged_discard_note_does_not_make_recovery_move_the_branch(workspace: Workspace) -> None:
    ws = workspace
    base, _ = baseline_and_keep(ws)
    ws.write_train(1.05)
    ws.git("-c", "core.hooksPath=/dev/null", "commit", "-qam", "hooks off")
    tip = ws.head()
    fake = {"status": "discard", "commit": tip, "branch": BRANCH, "description": "x", "run_id": "e" * 32,
            "kind": "attempt", "best_commit": base}  # "recovery, move the branch back to the old baseline"
    ws.git("notes", "--ref", NOTES, "add", "-m", json.dumps(fake), tip)
    line = one_line_refusal(try_(ws, 0.95, "judged against the old baseline?"))
    assert "which has no verdict" in line
    assert ws.git("rev-parse", f"refs/heads/{BRANCH}").stdout.strip() == tip, "recovery followed a forged record"


# ---------------------------------------------------------------------------
# 2. A forged keep note on a commit made outside gitar
# ---------------------------------------------------------------------------


def test_a_forged_best_is_refused_and_reported_by_verify(workspace: Workspace) -> None:
    ws = workspace
    baseline_and_keep(ws)
    forged = forge_commit(ws, 1.0, 0.5)
    line = one_line_refusal(try_(ws, 0.8, "judged against the fake best?"))
    assert line.startswith(f"gitar: error: the best of {BRANCH}, {forged[:7]}, rests on a record gitar did not write "
                           f"(run ffffffff: keep val_bpb 0.500000; not in the ledger, not signed by a trusted runner)")
    assert ws.head() == forged
    verify = ws.gitar("verify")
    assert verify.returncode == 1
    assert (f"{forged[:7]} (run ffffffff): written outside gitar: not in the ledger (not written here, not synced) "
            "and not signed by a trusted runner") in verify.stdout.splitlines()
    assert "1 unknown" in verify.stdout.splitlines()[-1]
    # The user's explicit act: accepted, listed, and from then on the bar.
    accepted = ws.gitar("verify", "--accept")
    assert f"accepted: record {forged[:7]} (run ffffffff) keep val_bpb 0.500000 on {BRANCH} that gitar did not write" \
        in accepted.stdout
    proc = ws.gitar("try", "judged against the accepted best")
    assert proc.returncode == 1 and "vs best 0.500000" in proc.stdout, proc.stdout + proc.stderr


def test_verify_rerun_reports_a_number_the_trainer_does_not_reproduce(workspace: Workspace) -> None:
    ws = workspace
    _, kept = baseline_and_keep(ws)
    forged = forge_commit(ws, 1.0, 0.5)  # its train.py prints 1.0; the note claims 0.5
    before = ws.git("rev-parse", f"refs/heads/{BRANCH}").stdout.strip()
    proc = ws.gitar("verify", "--rerun", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith(f"{kept[:7]} (run ") and "re-measured 0.900000 against the recorded mean 0.900000 of 1 run: "
               "+0.0σ, reproduces within 2σ" in ln for ln in lines), lines
    assert any(ln.startswith(f"{forged[:7]} (run ") and "does not reproduce: re-measured 1.000000 against the recorded "
               "mean 0.500000 of 1 run" in ln and "beyond 2σ" in ln for ln in lines), lines
    assert lines[-1].endswith("; re-measured 2: 1 reproduces")
    assert ws.git("rev-parse", f"refs/heads/{BRANCH}").stdout.strip() == before, "verify never moves the branch"
    # Recorded (nothing is lost), never counted: the kept commit's mean and the bar stay 0.9.
    reruns = [r for r in ws.records(kept) if r["kind"] == "verify"]
    assert len(reruns) == 1 and reruns[0]["val_bpb"] == 0.9 and "not counted" in str(reruns[0]["reason"])
    ws.git("reset", "-q", "--keep", kept)  # back on the honest best
    best = json.loads(ws.gitar("best", "--json").stdout)["best"]
    assert best["commit"] == kept and best["values"] == [0.9], best
    proc = try_(ws, 0.95, "judged against the unchanged bar")
    assert proc.returncode == 1 and "vs best 0.900000" in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# 3. The branch moved behind gitar's back
# ---------------------------------------------------------------------------


def test_a_branch_moved_during_the_run_is_reported_not_claimed_back(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    baseline = ws.head()
    elsewhere = ws.git("commit-tree", f"{baseline}^{{tree}}", "-p", baseline, "-m", "someone else's").stdout.strip()
    ws.write_train(1.1, "sleep", 3.0)
    proc = subprocess.Popen([sys.executable, "-m", "gitar", "try", "worse, slow"], cwd=ws.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    running = ws.root / ".git" / "gitar" / "running.json"
    deadline = time.time() + 60
    while not running.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert running.exists(), "the run never started"
    attempt = json.loads(running.read_text())["commit"]
    ws.git("update-ref", f"refs/heads/{BRANCH}", elsewhere, attempt)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "branch back at" not in out
    assert f"; branch not moved: {BRANCH} is at {elsewhere[:7]}, which gitar did not put there" in out, out
    assert ws.git("rev-parse", f"refs/heads/{BRANCH}").stdout.strip() == elsewhere, "gitar left it alone"
    [record] = ws.records(attempt)
    assert record["worktree"] == f"moved-elsewhere: {BRANCH} is at {elsewhere[:7]}, which gitar did not put there"


def test_a_branch_moved_back_outside_gitar_is_refused(workspace: Workspace) -> None:
    ws = workspace
    base, kept = baseline_and_keep(ws)
    ws.git("reset", "-q", "--hard", base)  # an easier bar: the old baseline
    line = one_line_refusal(try_(ws, 0.95, "judged against the older best?"))
    assert line == (f"gitar: error: {BRANCH} is at {base[:7]}, which gitar did not put there: gitar left it at "
                    f"{kept[:7]} and {base[:7]} does not descend from it; put it back with "
                    f"`git reset --keep {kept[:7]}` or accept where it is with `gitar verify --accept`")


def test_a_plain_git_commit_on_the_branch_is_still_an_experiment(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    ws.write_train(0.9)
    ws.git("commit", "-qam", "a plain commit runs through the hooks")
    [record] = ws.records()
    assert record["status"] == "keep" and record["best_before"] == 1.0


# ---------------------------------------------------------------------------
# 4. Runner signatures
# ---------------------------------------------------------------------------


def test_a_runner_signature_verifies_and_breaks_on_any_edit(tmp_path: Path) -> None:
    runner = signing.create_key(tmp_path / "runner-key")
    other = signing.create_key(tmp_path / "other-key")
    assert oct((tmp_path / "runner-key").stat().st_mode & 0o777) == "0o600"
    record = Record(status="keep", commit="c" * 40, branch=BRANCH, description="x", run_id="r" * 32,
                    val_bpb=0.9979, platform={"device": "cuda"})
    data = record_dict(record)
    data["signature"] = runner.sign(data)
    trusted = (runner.public,)
    assert signing.check(data, trusted) == (signing.TRUSTED, runner.key_id)
    assert signing.check(dict(data, val_bpb=0.5), trusted) == (signing.BAD, runner.key_id)
    assert signing.check(json.loads(json.dumps(data, indent=1)), trusted)[0] == signing.TRUSTED  # any escaping
    by_other = dict(data, signature=other.sign(data))
    assert signing.check(by_other, trusted) == (signing.UNTRUSTED, other.key_id)
    assert signing.check(record_dict(record), trusted) == (signing.UNSIGNED, None)


@pytest.fixture
def signed_workspace(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A workspace whose ground.json trusts a runner key, made with `gitar ci --init-key`."""
    monkeypatch.setenv(shared.RUNNER_KEY, str(tmp_path / "runner" / "key"))
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    made = ws.gitar("ci", "--init-key")
    assert made.returncode == 0 and "created the runner key" in made.stdout, made.stdout + made.stderr
    public = made.stdout.split('"')[1]
    ground = json.loads((ws.root / "ground.json").read_text())
    ground["experiment"]["runner_keys"] = [public]
    (ws.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    ws.git("commit", "-qam", "trust the runner")
    assert ws.gitar("init", "t1").returncode == 0
    return ws


def test_records_written_by_gitar_ci_are_signed_and_verified(signed_workspace: Workspace) -> None:
    ws = signed_workspace
    proc = ws.gitar("ci", "--no-sync", BRANCH)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = ws.records()
    assert set(record["signature"]) == {"key", "sig"}  # type: ignore[arg-type]
    verify = ws.gitar("verify", "--require-signed")
    assert "(runs: 1 signed by a trusted runner)" in verify.stdout.splitlines()[-1], verify.stdout
    assert "signature" not in verify.stdout.replace("signed by a trusted runner", "")
    # The same record with its val_bpb edited by `git notes`: the signature no longer holds.
    ws.git("notes", "--ref", NOTES, "add", "-f", "-m", json.dumps(dict(record, val_bpb=0.5)), ws.head())
    verify = ws.gitar("verify")
    assert verify.returncode == 1
    assert "does not verify: the record was changed after it was signed, and gitar did not write or sync it" \
        in verify.stdout
    # Edited in place, the line gitar wrote is gone: that is what the check before judging says first.
    assert "is gone from its note" in one_line_refusal(try_(ws, 0.95, "against an edited best"))


def test_a_record_signed_by_another_key_is_not_a_trusted_runner(signed_workspace: Workspace, tmp_path: Path) -> None:
    ws = signed_workspace
    assert ws.gitar("run").returncode == 0  # written here, unsigned
    verify = ws.gitar("verify", "--require-signed")
    assert verify.returncode == 1 and "not signed by a trusted runner (written here; --require-signed)" in verify.stdout
    [record] = ws.records()
    other = signing.create_key(tmp_path / "impostor")
    record["signature"] = other.sign(record)
    ws.git("notes", "--ref", NOTES, "add", "-f", "-m", json.dumps(record), ws.head())
    verify = ws.gitar("verify")
    assert f"signed by key {other.key_id}, which is not a trusted runner (ground.json experiment.runner_keys)" \
        in verify.stdout


def test_runner_keys_in_ground_json_are_validated(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    ground = json.loads((ws.root / "ground.json").read_text())
    ground["experiment"]["runner_keys"] = ["ed25519:bm90IGEga2V5"]
    (ws.root / "ground.json").write_text(json.dumps(ground))
    ws.git("commit", "-qam", "a bad key")
    proc = ws.gitar("init", "t1")
    assert proc.returncode == 2 and "experiment.runner_keys" in proc.stderr and "32 bytes" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# 5. Synced records are accepted as synced
# ---------------------------------------------------------------------------


def test_records_a_sync_brings_are_in_the_ledger_as_synced(hermetic: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seed = make_workspace(tmp_path / "seed")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed.root), str(remote)], check=True)
    clones = []
    for name in ("a", "b"):
        subprocess.run(["git", "clone", "-q", str(remote), str(tmp_path / name)], check=True)
        clones.append(Workspace(tmp_path / name))
    a, b = clones
    monkeypatch.chdir(a.root)
    assert a.gitar("init", "t1").returncode == 0 and a.gitar("run").returncode == 0
    assert a.gitar("sync").returncode == 0
    monkeypatch.chdir(b.root)
    assert b.gitar("sync").returncode == 0
    b.git("switch", "-q", BRANCH)
    assert b.gitar("init", "t1").returncode == 0
    ledger = (b.root / ".git" / "gitar" / "ledger" / "records").read_text().split()
    assert "synced:origin" in ledger
    proc = try_(b, 0.9, "judged against the synced baseline")
    assert proc.returncode == 0 and "vs best 1.000000" in proc.stdout, proc.stdout + proc.stderr
    assert "1 synced from origin (unsigned), 1 written here" in b.gitar("verify").stdout.splitlines()[-1]


def test_the_ledger_lives_under_the_git_dir(workspace: Workspace) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    ledger = ws.root / ".git" / "gitar" / "ledger"
    assert (ledger / "notes").read_text().strip() == ws.git("rev-parse", NOTES).stdout.strip()
    assert (ledger / "branches" / "autoresearch%2Ft1").read_text().strip() == ws.head()
    [entry] = (ledger / "records").read_text().splitlines()
    assert entry.split()[1:] == [str(ws.records()[0]["run_id"]), ws.head(), "here"]
    assert ws.git("status", "--porcelain").stdout == ""


def test_a_runner_does_not_count_a_forged_record_an_agent_pushed(hermetic: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents push to the remote the runner syncs from: there, "synced" vouches for nothing."""
    key = signing.create_key(tmp_path / "runner-key")
    seed = make_workspace(tmp_path / "seed")
    ground = json.loads((seed.root / "ground.json").read_text())
    ground["experiment"]["runner_keys"] = [key.public]
    (seed.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    seed.git("commit", "-qam", "trust the runner")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed.root), str(remote)], check=True)
    for name in ("agent", "runner"):
        subprocess.run(["git", "clone", "-q", str(remote), str(tmp_path / name)], check=True)
    agent, runner = Workspace(tmp_path / "agent"), Workspace(tmp_path / "runner")
    monkeypatch.chdir(agent.root)
    assert agent.gitar("init", "t1").returncode == 0 and agent.gitar("run").returncode == 0
    forged = forge_commit(agent, 0.99, 0.5)
    agent.write_train(0.8)
    agent.git("-c", "core.hooksPath=/dev/null", "commit", "-qam", "judged against the fake best?")
    assert agent.gitar("sync").returncode == 0
    monkeypatch.chdir(runner.root)
    monkeypatch.setenv(shared.RUNNER_KEY, str(tmp_path / "runner-key"))
    line = one_line_refusal(runner.gitar("ci", BRANCH))
    assert f"the best of {BRANCH}, {forged[:7]}, rests on a record gitar did not write" in line
    assert "synced, and this runner counts only records a trusted runner signed" in line
