"""`gitar verify`: clean on an honest branch; one line per problem after tampering; exit 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

from testing.measured import BRANCH, Measured
from testing.workspace import Workspace


def rewrite_note(ws: Workspace, commit: str, **changes: object) -> None:
    lines = [json.loads(line) for line in ws.git("notes", "--ref", "refs/notes/gitar", "show", commit)
             .stdout.splitlines() if line.strip()]
    for rec in lines:
        rec.update(changes)
    ws.git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-m", "\n".join(json.dumps(r) for r in lines), commit)


UNSANDBOXED = "records no sandbox: train.py ran unconfined (it could write .git and gitar's files)"
FORGED = "written outside gitar: not in the ledger (not written here, not synced) and not signed by a trusted runner"


def test_an_honest_branch_verifies_clean(measured: Measured) -> None:
    proc = measured.ws.gitar("verify")
    sha, run = measured.baseline[:7], str(measured.record["run_id"])[:8]
    summary = f"verified 1 kept record of {BRANCH} against its base {sha}"
    assert str(measured.record["sandbox"]).startswith("bwrap "), run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{summary}: clean (runs: 1 written here)"]


def test_a_record_that_claims_another_harness_or_source_is_reported(measured: Measured) -> None:
    ws = measured.ws
    rewrite_note(ws, measured.baseline, harness_sha256="0" * 64, val_bpb_source="reported")
    proc = ws.gitar("verify", "--branch", BRANCH)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    sha = measured.baseline[:7]
    # Rewritten by hand: the line gitar wrote is gone, and the one in its place is not gitar's.
    assert lines[0].endswith("a record gitar wrote here is gone from the notes: removed or edited outside gitar")
    assert lines[1].startswith(f"{sha} (run ") and "was measured by another harness than the base" in lines[1]
    assert "prepare.py/ground.json hash to" in lines[2] and "not the 000000000000 it records" in lines[2]
    assert lines[3].endswith("val_bpb was not measured by the harness evaluator (source: reported)")
    assert lines[-2].endswith(FORGED)
    n = 5
    assert len(lines) == n + 1
    assert lines[-1] == f"verified 1 kept record of {BRANCH} against its base {sha}: {n} problems (runs: 1 unknown)"


def test_a_kept_record_gitar_did_not_write_is_reported(measured: Measured) -> None:
    ws = measured.ws
    rewrite_note(ws, measured.baseline, val_bpb=0.5)  # `git notes` by hand: a better number
    proc = ws.gitar("verify")
    assert proc.returncode == 1
    assert f"{measured.baseline[:7]} (run {str(measured.record['run_id'])[:8]}): {FORGED}" in proc.stdout.splitlines()


def test_a_record_measured_with_the_sandbox_off_is_reported(measured: Measured) -> None:
    ws = measured.ws
    rewrite_note(ws, measured.baseline, sandbox="off")
    ws.gitar("verify", "--accept")  # the edit is the user's: accepted, so only the sandbox is left to report
    proc = ws.gitar("verify")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].endswith("was measured with the sandbox off (sandbox: off)")
    assert proc.stdout.splitlines()[-1].endswith(": 1 problem (runs: 1 accepted by hand)")


def test_a_moved_base_is_reported(measured: Measured) -> None:
    ws = measured.ws
    ws.git("switch", "-q", "-c", "elsewhere")
    prepare = ws.root / "prepare.py"
    prepare.write_text(prepare.read_text() + "# another harness\n")
    ws.git("commit", "-q", "--no-verify", "-am", "another harness")
    ws.git("update-ref", f"refs/gitar/base/{BRANCH}", ws.head())
    ws.git("switch", "-q", BRANCH)
    proc = ws.gitar("verify")
    assert proc.returncode == 1
    assert "was measured by another harness than the base" in proc.stdout
    n = 1
    assert proc.stdout.splitlines()[-1].endswith(f": {n} problem{'s' if n > 1 else ''} (runs: 1 written here)")


def test_data_measured_elsewhere_is_reported(measured: Measured) -> None:
    rewrite_note(measured.ws, measured.baseline, data_sha256="f" * 64)
    proc = measured.ws.gitar("verify")
    assert proc.returncode == 1 and "was evaluated on other data than the branch's pin" in proc.stdout


def test_reported_numbers_are_flagged_and_unverifiable_branches_refused(workspace: Workspace) -> None:
    ws = workspace  # the fake trainer's workspace: experiment.evaluate "reported"
    assert ws.gitar("run").returncode == 0
    proc = ws.gitar("verify")
    assert proc.returncode == 1
    assert "val_bpb was not measured by the harness evaluator (source: reported)" in proc.stdout
    [rec] = ws.records()
    assert rec["val_bpb_source"] == "reported" and rec["reported_val_bpb"] == rec["val_bpb"] == 1.0
    unknown = ws.gitar("verify", "--branch", "autoresearch/nope")
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        "gitar: error: no branch autoresearch/nope; name an experiment branch with --branch (see `git branch`)")
    ws.git("update-ref", "-d", "refs/gitar/base/autoresearch/t1")
    missing = ws.gitar("verify")
    assert missing.returncode == 2 and "has no recorded base (refs/gitar/base/autoresearch/t1)" in missing.stderr
    assert "Traceback" not in missing.stderr and Path(ws.root / ".git").is_dir()
