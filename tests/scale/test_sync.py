"""`gitar sync`: many writers, one notebook; no record is ever lost, whatever the interleaving."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gitar.review import summary
from gitar.sharing import sync as sync_module
from gitar.sharing.sync import sync
from gitar.store.git import Git
from gitar.store.records import Notebook, Record
from testing.lab import Lab
from testing.workspace import Workspace

ROUNDS = 100

# Each clone, in its own process: write one record, sync, 100 times. Every fourth record goes on
# the shared base commit (both clones write lines into the same note); the others on a new commit.
WRITER = textwrap.dedent("""
    import random
    import sys
    import time

    import pygit2
    from gitar.store.git import Git
    from gitar.review import summary
    from gitar.store.records import Record
    from gitar.sharing.sync import sync

    root, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    git = Git.discover(root)
    notebook = summary.writer(git)
    base = git.resolve("HEAD")
    tree = pygit2.Oid(hex=git.commit(base).tree_id)
    sig = pygit2.Signature("w", "w@example.com")
    for i in range(rounds):
        sha = base
        if i % 4:
            sha = str(git.repo.create_commit(None, sig, sig, f"{name} {i}", tree, [pygit2.Oid(hex=base)]))
            notebook.pin(sha, f"{name} {i}")
        notebook.append(Record(status="discard", commit=sha, branch="autoresearch/race",
                               description=f"{name} {i}", run_id=f"{name}-{i}"))
        # What is under test is that no record is lost. On a loaded 2-core machine one writer's
        # fetch-to-push window (~0.2 s) can span the other's whole cycle several times in a row,
        # so the bound here is generous; the default bound has its own test below.
        result = sync(git, "origin", tries=100)
        print(result.tries, flush=True)
        # A real writer trains for minutes between syncs; one that syncs back to back without a
        # pause starves the other (its push always lands inside the other's fetch-to-push window).
        time.sleep(random.uniform(0.05, 0.25))
""")


def _run_ids(records: list[Record]) -> set[str]:
    return {r.run_id for r in records}


def _clone_run_ids(ws: Workspace) -> set[str]:
    return {r.run_id for _, records in Notebook(Git.discover(ws.root)).all() for r in records}


def test_two_clones_racing_lose_no_record(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.clone("a"), lab.clone("b")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(ws.root), name, str(ROUNDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ws, name in ((a, "a"), (b, "b"))]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    tries = [int(x) for out, _ in outputs for x in out.split()]
    print(f"\n{len(tries)} syncs, {sum(tries) - len(tries)} retried pushes, most tries in one sync: {max(tries)}")
    for ws in (a, b):
        sync(Git.discover(ws.root), "origin")

    expected = {f"{name}-{i}" for name in "ab" for i in range(ROUNDS)}
    assert _clone_run_ids(a) == expected
    assert _clone_run_ids(b) == expected
    remote = {str(r["run_id"]) for records in lab.remote_notes().values() for r in records}
    assert remote == expected
    # The shared commit's note holds both clones' lines, merged line by line.
    base = a.head()
    assert len(lab.remote_notes()[base]) == 2 * len(range(0, ROUNDS, 4))
    # Every annotated commit reached the remote too, pinned.
    for commit in lab.remote_notes():
        assert commit == base or lab.remote_ref(f"refs/gitar/attempts/{commit}") == commit


def _record(git: Git, sha: str, run_id: str) -> None:
    summary.writer(git).append(Record(status="discard", commit=sha, branch="autoresearch/t1", description=run_id,
                                run_id=run_id))


def test_a_local_unpushed_record_survives_a_sync_against_diverged_notes(lab: Lab) -> None:
    a, b = lab.clone("a"), lab.clone("b")
    ga, gb = Git.discover(a.root), Git.discover(b.root)
    sha = ga.resolve("HEAD")
    _record(ga, sha, "from-a")
    sync(ga)
    _record(gb, sha, "from-b")  # b has never seen a's notes: the two notes refs have no common history
    mine = gb.ref_target("refs/notes/gitar")

    result = sync(gb)

    assert result.merged and result.notes_pushed
    assert _run_ids(Notebook(gb).records(sha)) == {"from-a", "from-b"}
    # b's notes were merged, not replaced: its own commit is in the history of the result.
    after = gb.ref_target("refs/notes/gitar")
    assert mine is not None and after is not None and gb.is_ancestor(mine, after)
    assert {r["run_id"] for r in lab.remote_notes()[sha]} == {"from-a", "from-b"}
    sync(ga)
    assert _run_ids(Notebook(ga).records(sha)) == {"from-a", "from-b"}


def test_sync_brings_the_summary_for_git_up_to_the_merged_records(lab: Lab) -> None:
    from gitar.review.summary import summary_text
    from gitar.store.refs import SUMMARY_REF

    a, b = lab.clone("a"), lab.clone("b")
    ga, gb = Git.discover(a.root), Git.discover(b.root)
    sha = ga.resolve("HEAD")
    _record(ga, sha, "from-a")
    sync(ga)
    _record(gb, sha, "from-b")
    sync(gb)
    note = gb.repo.lookup_note(sha, "refs/notes/gitar").message
    assert note.count("\n") == 2  # both records, one line each
    shown = b.git("notes", "--ref", SUMMARY_REF, "show", sha).stdout
    assert shown == summary_text(sha, note.encode()) and shown.startswith("discard")
    assert b.git("log", "-1", "--format=%s", SUMMARY_REF).stdout.strip() == \
        "gitar: summary of " + str(gb.ref_target("refs/notes/gitar"))
    assert lab.remote_ref(SUMMARY_REF) is None  # derived in each clone, never pushed


def test_sync_retries_on_a_locked_ref_and_on_a_concurrent_pusher(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    a, other = lab.clone("a"), lab.clone("other")
    ga, go = Git.discover(a.root), Git.discover(other.root)
    sha = ga.resolve("HEAD")
    _record(go, sha, "first")
    sync(go)
    _record(ga, sha, "mine")
    # The remote is busy: another receive-pack holds the notes ref's lock.
    lock = lab.remote / "refs" / "notes" / "gitar.lock"
    lock.write_text("")
    merges = 0
    real_merge = sync_module.merge_notes

    def merge_then_someone_pushes(git: Git, remote: str) -> bool:
        # After our second merge, another clone pushes: our lease is now stale.
        nonlocal merges
        merged = real_merge(git, remote)
        merges += 1
        if merges == 2:
            _record(go, sha, f"concurrent-{merges}")
            sync(go)
        return merged

    def pause(_: float) -> None:
        lock.unlink(missing_ok=True)  # the other push finished

    monkeypatch.setattr(sync_module, "merge_notes", merge_then_someone_pushes)
    result = sync(ga, sleep=pause)

    assert result.tries == 3
    assert "cannot lock ref" in result.rejections[0]
    assert "stale info" in result.rejections[1] or "fetch first" in result.rejections[1]
    assert {r["run_id"] for r in lab.remote_notes()[sha]} == {"first", "mine", "concurrent-2"}


def test_sync_gives_up_after_bounded_tries_and_keeps_the_records(lab: Lab) -> None:
    a = lab.clone("a")
    ga = Git.discover(a.root)
    sha = ga.resolve("HEAD")
    _record(ga, sha, "mine")
    (lab.remote / "refs" / "notes").mkdir(parents=True, exist_ok=True)
    (lab.remote / "refs" / "notes" / "gitar.lock").write_text("")
    waits: list[float] = []
    with pytest.raises(Exception, match="rejected the push 4 times"):
        sync(ga, tries=4, sleep=waits.append)
    assert len(waits) == 3 and all(0 <= w <= sync_module.BACKOFF_CAP_S for w in waits)
    assert _run_ids(Notebook(ga).records(sha)) == {"mine"}


def test_sync_never_fetches_into_the_local_notes_ref(lab: Lab) -> None:
    a = lab.clone("a")
    ga = Git.discover(a.root)
    sha = ga.resolve("HEAD")
    _record(ga, sha, "mine")
    # A remote whose notes were rewritten by someone else (no shared history with ours).
    other = lab.clone("other")
    go = Git.discover(other.root)
    _record(go, sha, "theirs")
    go.run("push", "-f", "origin", "refs/notes/gitar:refs/notes/gitar")
    sync(ga, push=False)
    assert _run_ids(Notebook(ga).records(sha)) == {"mine", "theirs"}
    assert ga.ref_target("refs/notes/remotes/origin/gitar") == go.ref_target("refs/notes/gitar")


def test_sync_names_a_missing_remote(lab: Lab) -> None:
    ga = Git.discover(lab.clone("a").root)
    with pytest.raises(Exception, match="no remote named 'upstream'"):
        sync(ga, "upstream")
