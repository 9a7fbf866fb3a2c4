"""Review commands on a real history: log, show, best, memory, learn, plot."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from testing.history import CRASH_DESCRIPTION, Built
from testing.trainers import fake_train
from testing.workspace import Workspace


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _warnings(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if "warning" in ln]


# -- log ---------------------------------------------------------------------------


def test_tsv_loads_with_pandas_as_results_tsv(review: Built) -> None:
    text = _ok(review.ws.gitar("log", "--tsv"))
    assert text.splitlines()[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    df = pd.read_csv(io.StringIO(text), sep="\t", dtype={"commit": str})
    assert list(df.columns) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert pd.api.types.is_float_dtype(df["val_bpb"]) and pd.api.types.is_float_dtype(df["memory_gb"])
    # oldest first, as results.tsv grows: the baseline is the first row
    assert list(df["commit"]) == [c[:7] for c in (review.baseline, review.wider, review.lr04, review.lr05,
                                                  review.crash, review.rotary)]
    assert list(df["status"]) == ["keep", "keep", "discard", "discard", "crash", "keep"]
    assert df["val_bpb"][0] == pytest.approx(1.001)  # the mean of the baseline's three runs
    assert df["val_bpb"][2] == pytest.approx(0.995) and df["memory_gb"][2] == pytest.approx(1.0)
    crash = df.iloc[4]
    assert crash["val_bpb"] == 0.0 and crash["memory_gb"] == 0.0
    assert crash["description"] == " ".join(CRASH_DESCRIPTION.split())  # tab and newline became spaces
    rows = text.splitlines()[1:]
    assert all(len(r.split("\t")) == 5 for r in rows)
    assert rows[0].split("\t")[1:3] == ["1.001000", "1.0"] and rows[4].split("\t")[1:4] == ["0.000000", "0.0", "crash"]


def _throughput_train(val_bpb: float, total_tokens_m: float, num_steps: int) -> str:
    """The fake trainer, reporting another throughput (as on a machine other work keeps busy)."""
    return fake_train(val_bpb, summary={"total_tokens_M": total_tokens_m, "num_steps": num_steps})


def test_steps_and_throughput_beside_the_number_and_its_flags(review: Built) -> None:
    ws = review.ws
    # Every run of the history reported 0.1 M tokens in 1.0 s, 3 steps: 100k tokens/s.
    (ws.root / "train.py").write_text(_throughput_train(0.97, 0.04, 1))
    busy = ws.gitar("try", "same idea on a busy machine")
    assert busy.returncode == 0, busy.stderr
    assert " 1.0s 1 step 40k tok/s \"same idea on a busy machine\"" in busy.stdout, busy.stdout
    assert "; throughput 0.40x the best's: the machine may be busy" in busy.stdout, busy.stdout
    [rec] = ws.records(ws.tip())
    assert rec["best_tokens_per_s"] == 100000.0 and rec["num_steps"] == 1
    # A keep that improves on the best by less than the measured noise (σ 0.001 from the baseline's runs).
    (ws.root / "train.py").write_text(_throughput_train(0.9695, 0.04, 1))
    close = ws.gitar("try", "a hair better")
    assert close.returncode == 0, close.stderr
    assert "; within noise: improved 0.000500, σ 0.001000" in close.stdout, close.stdout
    assert "throughput" not in close.stdout  # as fast as the best it was judged against
    rows = _ok(ws.gitar("log")).splitlines()
    assert rows[0].split()[5:8] == ["train_s", "steps", "tok/s"], rows[0]
    assert rows[1].split()[5:8] == ["1.0", "1", "40k"] and rows[1].endswith("a hair better [within noise]"), rows[1]
    assert rows[2].endswith("same idea on a busy machine [throughput 0.40x the best's]"), rows[2]
    assert rows[3].split()[5:8] == ["1.0", "3", "100k"] and "[" not in rows[3], rows[3]
    newest = [json.loads(ln) for ln in _ok(ws.gitar("log", "--json", "-n", "2")).splitlines()]
    assert newest[0]["num_steps"] == 1 and newest[0]["tokens_per_s"] == 40000.0
    assert newest[0]["flags"] == ["within noise: improved 0.000500, σ 0.001000; `gitar run --repeat 3` re-measures it"]
    assert newest[1]["flags"] == ["throughput 0.40x the best's: the machine may be busy"]
    shown = _ok(ws.gitar("show", "HEAD~1"))
    assert "1 step 40k tok/s" in shown and "throughput 0.40x the best's: the machine may be busy" in shown
    # results.tsv stays autoresearch's five columns.
    assert all(len(r.split("\t")) == 5 for r in _ok(ws.gitar("log", "--tsv")).splitlines())


def test_log_newest_first_and_json(review: Built) -> None:
    lines = _ok(review.ws.gitar("log")).splitlines()
    assert lines[0].split()[:3] == ["commit", "status", "val_bpb"]
    shas = [ln.split()[0] for ln in lines[1:]]
    assert shas == [c[:7] for c in (review.rotary, review.crash, review.lr05, review.lr04, review.wider,
                                    review.baseline)]
    assert "baseline" in lines[-1] and "[mean of 3 runs]" in lines[-1]
    assert "-0.010000" in lines[1]  # rotary against the best before it (0.99)
    assert "RuntimeError" in lines[2]  # a crash says why
    objs = [json.loads(ln) for ln in _ok(review.ws.gitar("log", "--json", "-n", "2")).splitlines()]
    assert [o["commit"] for o in objs] == [review.rotary, review.crash]
    assert objs[0]["status"] == "keep" and objs[0]["delta"] == pytest.approx(-0.01)
    assert objs[1]["status"] == "crash" and "out of memory" in objs[1]["cause"]


def test_log_all_across_two_branches(review: Built) -> None:
    ws = review.ws
    _ok(ws.gitar("init", "t2"))  # a second branch from the best of the first
    _ok(ws.gitar("run"))  # its baseline: the same commit, measured on t2
    ws.write_train(0.97)
    _ok(ws.gitar("try", "on the second branch"))
    mine = _ok(ws.gitar("log")).splitlines()[1:]
    assert len(mine) == 2 and "on the second branch" in mine[0]
    every = _ok(ws.gitar("log", "--all")).splitlines()
    assert every[0].split()[0] == "branch"
    branches = [ln.split()[0] for ln in every[1:]]
    assert branches.count("autoresearch/t1") == 6 and branches.count("autoresearch/t2") == 2
    assert every[1].split()[0] == "autoresearch/t2"  # the newest attempt is first
    tsv = pd.read_csv(io.StringIO(_ok(ws.gitar("log", "--all", "--tsv"))), sep="\t")
    assert len(tsv) == 8


# -- show --------------------------------------------------------------------------


def test_show_discarded_commit_reached_only_by_its_pin(review: Built) -> None:
    ws = review.ws
    assert ws.git("branch", "--contains", review.lr04).stdout.strip() == ""
    assert ws.git("for-each-ref", f"refs/gitar/attempts/{review.lr04}").stdout.strip()
    out = _ok(ws.gitar("show", review.lr04[:10]))
    assert out.startswith(f"commit {review.lr04}")
    assert "discard" in out and "increase LR to 0.04" in out
    assert "+VAL_BPB = 0.995" in out and "-VAL_BPB = 0.99" in out  # the diff against its parent
    assert f"diff against {review.wider[:7]}" in out
    assert "val_bpb:          0.995000" in out  # the last lines of its log
    data = json.loads(_ok(ws.gitar("show", review.lr04, "--json")))
    assert data["parent"] == review.wider and data["records"][0]["status"] == "discard"
    assert any("val_bpb" in ln for ln in data["log_tail"])


# -- best ----------------------------------------------------------------------------


def test_best_mean_runs_and_noise(review: Built) -> None:
    ws = review.ws
    out = _ok(ws.gitar("best"))
    assert out.startswith(f"best {review.rotary[:7]} val_bpb 0.980000")
    assert "noise on this branch: std 0.001000" in out
    _ok(ws.gitar("run", "--repeat", "2"))  # re-measure the best
    data = json.loads(_ok(ws.gitar("best", "--json")))
    assert data["best"]["commit"] == review.rotary and data["best"]["runs"] == 3
    assert data["best"]["val_bpb"] == pytest.approx(0.98)
    assert data["baseline"] == {"commit": review.baseline, "val_bpb": pytest.approx(1.001)}
    # pooled: the baseline's squares (2e-6) and the best's (0) over 2 + 2 degrees of freedom
    assert data["noise"]["std"] == pytest.approx((2e-6 / 4) ** 0.5, abs=1e-6)
    assert data["noise"]["n"] == 6 and data["noise"]["commits"] == 2
    assert data["kept"] == 3 and data["attempts"] == 6


# -- memory --------------------------------------------------------------------------


def test_memory_names_every_kept_experiment_and_is_stable(review: Built) -> None:
    ws = review.ws
    first = _ok(ws.gitar("memory"))
    assert first == _ok(ws.gitar("memory"))
    for sha in (review.baseline, review.wider, review.rotary):
        assert sha[:7] in first
    assert "more capacity pays at this size" in first  # the hypothesis
    assert f"2× {review.lr05[:7]}" in first  # LR 0.04 and 0.05: one idea tried twice
    assert "near misses" in first and review.lr05[:7] in first.split("near misses")[1].split("\n")[1]
    assert "RuntimeError: CUDA error: out of memory" in first
    assert "std 0.001000" in first
    assert len(first.rstrip("\n")) <= 6000


@pytest.mark.parametrize("limit", [300, 700, 1500])
def test_memory_respects_its_bound(review: Built, limit: int) -> None:
    out = _ok(review.ws.gitar("memory", "--max-chars", str(limit))).rstrip("\n")
    assert len(out) <= limit
    assert out.startswith("gitar memory: autoresearch/t1")
    if limit < 700:
        assert "… " in out  # something was cut, and it says so


def test_memory_bound_refused_below_minimum(review: Built) -> None:
    proc = review.ws.gitar("memory", "--max-chars", "10")
    assert proc.returncode == 2 and "--max-chars" in proc.stderr


# -- learn ---------------------------------------------------------------------------


def test_lesson_shows_in_memory_never_counts_as_a_run_and_survives_gc(review: Built) -> None:
    ws = review.ws
    out = _ok(ws.gitar("learn", review.lr04[:8], "higher LR diverges after warmup; try warmup first"))
    assert out.startswith(f"learned on {review.lr04[:7]}")
    _ok(ws.gitar("learn", "HEAD", "rotary base matters more than width"))
    lines = [json.loads(ln) for ln in ws.git("notes", "--ref", "refs/notes/gitar", "show", "HEAD").stdout.splitlines()]
    assert lines[-1]["status"] == "lesson" and lines[-1]["commit"] == review.rotary
    best = json.loads(_ok(ws.gitar("best", "--json")))
    assert best["best"]["runs"] == 1  # the lesson is not a run
    ws.git("reflog", "expire", "--expire=now", "--all")
    ws.git("gc", "--prune=now", "-q")
    memory = _ok(ws.gitar("memory"))
    assert "higher LR diverges after warmup" in memory and "rotary base matters more than width" in memory
    # the judge still reads the tip's note with a lesson in it
    ws.write_train(0.985)
    proc = ws.gitar("try", "after a lesson", "--json")
    assert proc.returncode == 1, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["status"] == "discard" and rec["best_before"] == pytest.approx(0.98)
    assert rec["seed"] == 42  # a new commit's first run: lessons do not count as runs


def test_learn_refuses_a_commit_without_a_record(review: Built) -> None:
    ws = review.ws
    orphan = ws.git("commit-tree", "HEAD^{tree}", "-m", "never tried").stdout.strip()
    proc = ws.gitar("learn", orphan, "anything")
    assert proc.returncode == 2 and "no gitar record" in proc.stderr
    assert ws.git("notes", "--ref", "refs/notes/gitar", "list", orphan, check=False).returncode != 0
    proc = ws.gitar("learn", "no-such-rev", "anything")
    assert proc.returncode == 2 and "unknown revision" in proc.stderr
    assert ws.gitar("learn", "HEAD", "   ").returncode == 2


# -- damaged notes -------------------------------------------------------------------


def test_a_line_that_is_not_json_is_skipped_with_one_warning(review: Built) -> None:
    ws = review.ws
    note = ws.git("notes", "--ref", "refs/notes/gitar", "show", review.rotary).stdout
    ws.git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-m", note.rstrip("\n") + "\n{this is not json",
           review.rotary)
    for args in (["log"], ["memory"], ["best"], ["log", "--tsv"], ["show", review.rotary]):
        proc = ws.gitar(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        warnings = _warnings(proc)
        assert len(warnings) == 1 and review.rotary[:12] in warnings[0], (args, proc.stderr)
    assert review.rotary[:7] in _ok(ws.gitar("best"))  # the record beside the bad line still counts


# -- plot ----------------------------------------------------------------------------


def test_plot_is_a_png_that_decodes(review: Built, tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "progress.png"
    text = _ok(review.ws.gitar("plot", "-o", str(out)))
    assert "6 experiments, 3 kept" in text
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    image = matplotlib.image.imread(str(out))
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    assert image.std() > 0.01  # not a blank canvas


def test_plot_refuses_a_branch_without_numbers(workspace: Workspace) -> None:
    proc = workspace.gitar("plot")
    assert proc.returncode == 2 and "nothing to plot" in proc.stderr
    assert not (workspace.root / "progress.png").exists()


# -- one number, one spelling ----------------------------------------------------------

# Four runs whose mean, 1.5150155, lies exactly between two printed values: summed in another
# order or updated run by run it lands a hair above or below, and a format of each would differ.
_RUNS = {42: 1.712988, 43: 1.458416, 44: 1.196564, 45: 1.692094}


def test_every_command_spells_the_best_and_a_delta_the_same(workspace: Workspace) -> None:
    ws = workspace
    seeded = fake_train(1.0).replace("VAL_BPB = 1.0\n",
                                     f"VAL_BPB = {_RUNS!r}.get(int(os.environ.get('GITAR_SEED', '0')), 1.0)\n")
    (ws.root / "train.py").write_text(seeded)
    assert ws.gitar("try", "the baseline, measured four times").returncode == 0
    repeat = ws.gitar("run", "--repeat", "3", "--json")
    assert repeat.returncode == 0, repeat.stderr
    last = json.loads(repeat.stdout.splitlines()[-1])
    best = "1.515016"  # 1.5150155, rounded half up
    assert f"mean {best} over 4 runs" in last["reason"], last["reason"]
    assert f"val_bpb {best}" in _ok(ws.gitar("status"))
    assert _ok(ws.gitar("best")).startswith(f"best {ws.tip()[:7]} val_bpb {best}")
    assert json.loads(_ok(ws.gitar("best", "--json")))["best"]["val_bpb"] == float(best)
    assert f"val_bpb {best} (mean of 4 runs)" in _ok(ws.gitar("memory"))

    (ws.root / "train.py").write_text(fake_train(1.6))
    tried = ws.gitar("try", "worse by a delta that lies on a half")
    assert tried.returncode == 1, tried.stderr
    delta = "+0.084984"  # 1.600000 - 1.515016, the two numbers as every command prints them
    assert f"({delta} vs best {best})" in tried.stdout, tried.stdout
    assert delta in _ok(ws.gitar("log")).splitlines()[1]
    assert f"delta {delta}" in _ok(ws.gitar("memory"))
    assert json.loads(_ok(ws.gitar("log", "--json")).splitlines()[0])["delta"] == float(delta)
