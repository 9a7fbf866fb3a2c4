"""Each keep rule end to end: `gitar run --repeat`, `gitar try`, the real hooks, a seeded-noise trainer.

The baseline (base 1.0) is measured three times: 0.999, 1.003, 0.998, mean 1.0, σ ≈ 0.00265.
A null change (a comment) reports 0.999 on its first run (seed 42): strict keeps that luck.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from testing.trainers import BASELINE_STD, write_noisy
from testing.workspace import JudgedWorkspace, Workspace, ok


def _measure_baseline(ws: Workspace, repeat: int = 3) -> None:
    proc = ws.gitar("run", "--repeat", str(repeat))
    assert proc.returncode == 0, ok(proc)


def test_repeat_records_the_noise_and_status_shows_it(judged: JudgedWorkspace) -> None:
    ws = judged("strict")
    base = ws.head()
    _measure_baseline(ws)
    records = ws.records(base)
    assert [r["seed"] for r in records] == [42, 43, 44]
    assert [r["val_bpb"] for r in records] == [0.999, 1.003, 0.998]
    assert "noise" not in records[0]  # one run has no spread
    assert records[1]["noise"]["n"] == 2 and records[2]["noise"]["n"] == 3
    assert records[2]["noise"]["std"] == pytest.approx(BASELINE_STD, abs=1e-6)
    # mean 1.0; |deviations| 0.001, 0.003, 0.002 -> median 0.002, × sqrt(3/2) × 1.4826
    assert records[2]["noise"]["mad"] == pytest.approx(0.002 * math.sqrt(1.5) * 1.482602, abs=1e-6)
    status = json.loads(ws.gitar("status", "--json").stdout)
    assert status["noise"]["n"] == 3 and status["best"]["runs"] == 3
    assert status["keep_rule"] == "strict"
    line = ws.gitar("status").stdout
    assert f"noise σ {BASELINE_STD:.6f}" in line and "mean of 3 runs" in line


def test_strict_keeps_a_lucky_null_change(judged: JudgedWorkspace) -> None:
    ws = judged("strict")
    _measure_baseline(ws)
    write_noisy(ws, 1.0, {42: -0.001}, note="a change that does nothing")
    proc = ws.gitar("try", "null change", "--json")
    assert proc.returncode == 0, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "keep" and rec["rule"] == "strict" and rec["val_bpb"] == 0.999
    assert rec["best_before"] == pytest.approx(1.0) and "margin" not in rec


def test_margin_refuses_the_lucky_null_change_and_keeps_a_clear_one(judged: JudgedWorkspace) -> None:
    ws = judged("margin", margin_k=2)
    _measure_baseline(ws)
    best = ws.tip()
    write_noisy(ws, 1.0, {42: -0.001}, note="a change that does nothing")
    proc = ws.gitar("try", "null change", "--json")
    assert proc.returncode == 1, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "discard" and rec["rule"] == "margin"
    assert rec["margin"] == pytest.approx(2 * BASELINE_STD, abs=1e-6)
    assert "measured over 3 runs" in rec["reason"] and "2×σ" in rec["reason"]
    assert ws.tip() == best

    write_noisy(ws, 0.99, {42: 0.001})
    proc = ws.gitar("try", "a real improvement", "--json")
    assert proc.returncode == 0, ok(proc)
    assert json.loads(proc.stdout)["status"] == "keep"


def test_margin_without_measured_noise_uses_the_floor(judged: JudgedWorkspace) -> None:
    ws = judged("margin", margin_k=2, noise_floor=0.002)
    _measure_baseline(ws, repeat=1)
    write_noisy(ws, 0.997)  # 0.003 better: less than 2 × 0.002
    proc = ws.gitar("try", "smaller than the margin", "--json")
    assert proc.returncode == 1, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["margin"] == pytest.approx(0.004) and "noise_floor" in rec["reason"]


def test_confirm_reruns_a_close_candidate_then_discards_on_the_mean(judged: JudgedWorkspace) -> None:
    ws = judged("confirm", margin_k=2, confirm_runs=2)
    _measure_baseline(ws)
    best = ws.tip()
    write_noisy(ws, 1.0, {42: -0.001, 43: -0.0005, 44: 0.0005}, note="does nothing")
    proc = ws.gitar("try", "null change under confirm", "--json")
    assert proc.returncode == 1, ok(proc)
    final = json.loads(proc.stdout)
    runs = ws.records(final["commit"])
    assert [r["seed"] for r in runs] == [42, 43, 44]  # three runs, three seeds
    assert [r["status"] for r in runs] == ["undecided", "undecided", "discard"]
    assert [r["kind"] for r in runs] == ["confirm", "confirm", "attempt"]
    assert [r["val_bpb"] for r in runs] == [0.999, 0.9995, 1.0005]
    assert len({r["run_id"] for r in runs}) == 3 and runs[-1]["run_id"] == final["run_id"]
    assert len({r["log"] for r in runs}) == 3
    assert final["status"] == "discard" and "mean 0.999667 of 3 runs" in final["reason"]
    assert "√(1/3+1/3)" in final["reason"]
    assert ws.tip() == best
    # the candidate's runs joined the noise estimate; the best's bar is unchanged
    status = json.loads(ws.gitar("status", "--json").stdout)
    assert status["noise"]["n"] == 6 and status["best"]["runs"] == 3
    assert status["best"]["val_bpb"] == pytest.approx(1.0)


def test_confirm_keeps_a_clear_improvement_without_reruns(judged: JudgedWorkspace) -> None:
    ws = judged("confirm")
    _measure_baseline(ws)
    write_noisy(ws, 0.98)
    proc = ws.gitar("try", "clearly better", "--json")
    assert proc.returncode == 0, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "keep" and rec["kind"] == "attempt" and len(ws.records(rec["commit"])) == 1
    assert ws.tip() == rec["commit"]


def test_confirm_discards_a_worse_candidate_at_once(judged: JudgedWorkspace) -> None:
    ws = judged("confirm")
    _measure_baseline(ws)
    write_noisy(ws, 1.0, {42: 0.0005})
    proc = ws.gitar("try", "worse on its first run", "--json")
    assert proc.returncode == 1, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "discard" and len(ws.records(rec["commit"])) == 1
    assert "not below" in rec["reason"]


def test_confirm_keeps_on_the_mean_and_its_runs_join_the_best(judged: JudgedWorkspace) -> None:
    ws = judged("confirm", margin_k=1, confirm_runs=3)
    _measure_baseline(ws)
    write_noisy(ws, 0.997, {42: 0.002, 43: -0.002})  # 0.999 (close: run again), then 0.995
    proc = ws.gitar("try", "better, but its first run hides it", "--json")
    assert proc.returncode == 0, ok(proc)
    rec = json.loads(proc.stdout)
    kept = rec["commit"]
    assert [r["status"] for r in ws.records(kept)] == ["undecided", "keep"]
    assert "mean 0.997000 of 2 runs" in rec["reason"]
    assert ws.tip() == kept
    status = json.loads(ws.gitar("status", "--json").stdout)
    assert status["best"] == {"commit": kept, "val_bpb": pytest.approx(0.997), "runs": 2}
    write_noisy(ws, 0.5)
    proc = ws.gitar("try", "judged against the kept mean", "--json")
    assert json.loads(proc.stdout)["best_before"] == pytest.approx(0.997)


def test_a_crash_during_a_confirm_rerun_ends_it_as_a_crash(judged: JudgedWorkspace) -> None:
    ws = judged("confirm")
    _measure_baseline(ws)
    best = ws.tip()
    write_noisy(ws, 1.0, {42: -0.001}, crash_seeds=(43,))
    proc = ws.gitar("try", "crashes on its re-run", "--json")
    assert proc.returncode == 1, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["status"] == "crash" and rec["kind"] == "attempt" and rec["seed"] == 43
    assert "run 2 of the candidate failed" in rec["reason"] and "diverged" in rec["error"]["message"]
    assert [r["status"] for r in ws.records(rec["commit"])] == ["undecided", "crash"]
    assert ws.tip() == best


def test_a_remeasured_best_moves_the_bar(judged: JudgedWorkspace) -> None:
    ws = judged("strict")
    _measure_baseline(ws, repeat=1)  # 0.999: the baseline's lucky first run
    proc = ws.gitar("run", "--repeat", "2")  # 1.003 and 0.998: the mean is 1.0
    assert proc.returncode == 0, ok(proc)
    write_noisy(ws, 0.9995)  # worse than the lucky 0.999, better than the mean
    proc = ws.gitar("try", "judged against the re-measured best", "--json")
    assert proc.returncode == 0, ok(proc)
    rec = json.loads(proc.stdout)
    assert rec["best_before"] == pytest.approx(1.0) and rec["status"] == "keep"


def test_status_shows_confirm_reruns_and_the_branch_stays_on_the_candidate(judged: JudgedWorkspace) -> None:
    ws = judged("confirm", confirm_runs=2)
    _measure_baseline(ws)
    best = ws.tip()
    write_noisy(ws, 1.0, {42: -0.001, 43: -0.0005, 44: 0.0005}, sleep_s=2.0, note="slow null change")
    proc = ws.gitar("try", "watched while it re-runs", "--detach", "--json")
    assert proc.returncode == 0, ok(proc)
    candidate = json.loads(proc.stdout)["commit"]
    seen: dict[str, object] = {}
    deadline = time.time() + 60
    while time.time() < deadline:
        status = json.loads(ws.gitar("status", "--json").stdout)
        running = status["running"]
        if running is None:
            break
        if running.get("confirm_run") == 2:
            seen = running
            assert ws.tip() == candidate  # status ran recovery: it must not move a live confirm back
            text = ws.gitar("status").stdout
            assert f"confirm: run 2 of up to 3 of {candidate[:7]}" in text and "0.999000" in text
            break
        time.sleep(0.2)
    assert seen.get("earlier_val_bpb") == [0.999], seen
    proc = ws.gitar("wait", "--json")
    assert proc.returncode == 1, ok(proc)
    final = json.loads(proc.stdout)
    assert final["status"] == "discard" and final["commit"] == candidate and final["kind"] == "attempt"
    assert ws.tip() == best
