"""The pure parts of judging: noise estimates, σ with its floor, the three keep rules, edge cases."""

from __future__ import annotations

import math
import statistics

import pytest

from gitar.loop.judge import Best, Policy, Sigma, decide, judge, sigma_of, threshold
from gitar.review.noise import MAD_TO_STD, Noise, noise_from, pooled_spread
from gitar.store.records import Record

BEST = Best(commit="b" * 40, val_bpb=1.0, runs=1)
MEASURED = Sigma(0.002, "σ measured")


def _noise(std: float) -> Noise:
    return Noise(n=4, std=std, mad=std, commit="c" * 40, commits=1)


# --- noise -------------------------------------------------------------------------------------


def test_no_group_of_two_runs_measures_nothing() -> None:
    assert pooled_spread([]) is None
    assert pooled_spread([[1.0]]) is None
    assert pooled_spread([[1.0], [0.9]]) is None  # many commits, one run each: still no spread


def test_a_pair_gives_the_pair_spread_in_both_estimates() -> None:
    s = pooled_spread([[1.000, 1.004]])
    assert s is not None and s.n == 2
    assert s.std == pytest.approx(0.004 / math.sqrt(2))
    # both runs deviate by 0.002 from the mean; × sqrt(2/1) makes that a draw of N(0, σ²)
    assert s.mad == pytest.approx(MAD_TO_STD * 0.002 * math.sqrt(2))


def test_one_group_std_is_the_sample_std() -> None:
    values = [0.991, 0.998, 1.004, 0.995, 1.001]
    s = pooled_spread([values])
    assert s is not None and s.std == pytest.approx(statistics.stdev(values))


def test_mad_with_ties_is_the_tied_deviation() -> None:
    s = pooled_spread([[1.0, 1.0, 1.0, 1.3]])  # mean 1.075: three runs deviate by 0.075, one by 0.225
    assert s is not None
    assert s.mad == pytest.approx(MAD_TO_STD * 0.075 * math.sqrt(4 / 3))
    assert s.std == pytest.approx(statistics.stdev([1.0, 1.0, 1.0, 1.3]))
    assert s.mad < s.std  # the lone odd run dominates std, not the median deviation


def test_an_odd_run_in_another_commit_barely_moves_the_mad() -> None:
    calm = [[1.0, 1.002], [0.9, 0.902], [0.8, 0.802]]
    base = pooled_spread(calm)
    odd = pooled_spread([*calm, [0.7, 0.75]])
    assert base is not None and odd is not None
    assert odd.mad == pytest.approx(base.mad)  # the median of 8 deviations: still 0.001·√2
    assert odd.std > 10 * base.std


def test_identical_runs_have_no_spread() -> None:
    s = pooled_spread([[0.95, 0.95]])
    assert s is not None and s.std == 0.0 and s.mad == 0.0


def test_pooling_ignores_how_good_each_commit_is() -> None:
    a = [1.000, 1.002, 0.998]
    shifted = [x - 0.5 for x in a]
    one = pooled_spread([a])
    two = pooled_spread([a, shifted])
    assert one is not None and two is not None
    # twice the same deviations: same std estimate, more runs behind it
    assert two.n == 6 and two.std == pytest.approx(one.std)
    assert two.mad == pytest.approx(one.mad)


def test_mad_estimates_gaussian_sigma() -> None:
    import random

    rng = random.Random(7)
    groups = [[rng.gauss(0.0, 0.01) for _ in range(3)] for _ in range(2000)]
    s = pooled_spread(groups)
    assert s is not None
    assert s.std == pytest.approx(0.01, rel=0.03)
    assert s.mad == pytest.approx(0.01, rel=0.1)
    assert abs(MAD_TO_STD * statistics.NormalDist().inv_cdf(0.75) - 1) < 1e-12


def _rec(commit: str, val: float | None, status: str = "discard", branch: str = "autoresearch/t1") -> Record:
    return Record(status=status, commit=commit, branch=branch, description="d", run_id="r", val_bpb=val)


def test_branch_noise_pools_only_that_branchs_successful_runs() -> None:
    a, b = "a" * 40, "b" * 40
    entries = [
        (a, [_rec(a, 1.0, "keep"), _rec(a, 1.002), _rec(a, 0.998, "undecided"), _rec(a, None, "crash"),
             _rec(a, 5.0, branch="autoresearch/other")]),
        (b, [_rec(b, 0.9), _rec(b, 0.904)]),
        ("c" * 40, [_rec("c" * 40, 0.7)]),
    ]
    noise = noise_from(entries, "autoresearch/t1")
    assert noise is not None
    assert (noise.n, noise.commits, noise.commit) == (5, 2, a)
    expected = pooled_spread([[1.0, 1.002, 0.998], [0.9, 0.904]])
    assert expected is not None and noise.std == pytest.approx(expected.std)
    assert noise_from(entries, "autoresearch/none") is None
    assert noise.as_dict() == {"n": 5, "std": round(noise.std, 6), "mad": round(noise.mad, 6)}


# --- σ -----------------------------------------------------------------------------------------


def test_no_noise_measured_uses_the_floor() -> None:
    s = sigma_of(None, 0.003)
    assert s.value == 0.003 and "noise_floor" in s.source and "--repeat" in s.source


def test_measured_noise_below_the_floor_is_raised_to_it() -> None:
    s = sigma_of(_noise(0.0005), 0.001)
    assert s.value == 0.001 and "measured 0.000500" in s.source


def test_measured_noise_above_the_floor_is_used() -> None:
    s = sigma_of(_noise(0.004), 0.001)
    assert s.value == 0.004 and "measured over 4 runs" in s.source


# --- the rules ---------------------------------------------------------------------------------


def test_strict_keeps_anything_below_and_nothing_equal() -> None:
    p = Policy("strict")
    assert decide(p, [0.999999], BEST, MEASURED).status == "keep"
    equal = decide(p, [1.0], BEST, MEASURED)
    assert equal.status == "discard" and equal.margin is None and equal.rule == "strict"


def test_margin_needs_more_than_k_sigma() -> None:
    p = Policy("margin", margin_k=2)
    assert threshold(p, 0.002) == pytest.approx(0.004)
    assert decide(p, [0.9955], BEST, MEASURED).status == "keep"
    at = decide(p, [0.5], BEST, Sigma(0.25, "s"))  # exact in binary: the gain is exactly the margin
    assert at.status == "discard" and at.margin == 0.5  # exactly the margin is not more
    assert decide(p, [0.997], BEST, MEASURED).status == "discard"


def test_margin_with_zero_sigma_is_strict() -> None:
    p = Policy("margin", margin_k=2)
    assert decide(p, [0.9999], BEST, Sigma(0.0, "s")).status == "keep"
    assert decide(p, [1.0], BEST, Sigma(0.0, "s")).status == "discard"


def test_confirm_first_run() -> None:
    p = Policy("confirm", margin_k=2, confirm_runs=2)
    one = threshold(p, 0.002, 1, 1)
    assert one == pytest.approx(2 * 0.002 * math.sqrt(2))
    assert decide(p, [1.0001], BEST, MEASURED).status == "discard"
    assert decide(p, [1.0], BEST, MEASURED).status == "discard"
    assert decide(p, [1.0 - one - 1e-6], BEST, MEASURED).status == "keep"
    close = decide(p, [0.999], BEST, MEASURED)
    assert close.status == "undecided" and "2 of up to 3 runs" in close.reason


def test_confirm_decides_on_the_mean_and_stops_at_its_limit() -> None:
    p = Policy("confirm", margin_k=2, confirm_runs=2)
    best = Best("b" * 40, 1.0, 4)
    assert threshold(p, 0.002, 3, 4) == pytest.approx(2 * 0.002 * math.sqrt(1 / 3 + 1 / 4))
    assert decide(p, [0.999, 0.998], best, MEASURED).status == "undecided"
    assert decide(p, [0.999, 1.002], best, MEASURED).status == "discard"  # mean no longer below: stop early
    last = decide(p, [0.999, 0.998, 0.998], best, MEASURED)  # gain 0.0017 < 0.00306 after 3 runs
    assert last.status == "discard" and "mean 0.998333 of 3 runs" in last.reason
    kept = decide(p, [0.999, 0.995, 0.995], best, MEASURED)  # gain 0.0037 > 0.00306
    assert kept.status == "keep" and kept.delta == pytest.approx(-0.005)  # delta is this run's


def test_confirm_with_one_rerun() -> None:
    p = Policy("confirm", margin_k=1, confirm_runs=1)
    assert p.max_runs == 2
    assert decide(p, [0.999], BEST, MEASURED).status == "undecided"
    assert decide(p, [0.999, 0.9995], BEST, MEASURED).status == "discard"


def test_decide_needs_a_run_and_a_known_rule() -> None:
    with pytest.raises(ValueError):
        decide(Policy("strict"), [], BEST, MEASURED)
    with pytest.raises(ValueError):
        decide(Policy("lenient"), [0.9], BEST, MEASURED)


def test_judge_wraps_crashes_baselines_and_remeasurements() -> None:
    p = Policy("confirm")
    assert judge("ok", 1.2, None, p, MEASURED).status == "keep"  # baseline
    again = judge("ok", 1.02, Best("b" * 40, 1.0, 1), p, MEASURED, remeasure=True)
    assert again.status == "keep" and "mean 1.010000 over 2 runs" in again.reason
    crash = judge("crash", None, BEST, p, MEASURED, "RuntimeError: boom", earlier=[0.999])
    assert crash.status == "crash" and "run 2 of the candidate failed" in crash.reason and "boom" in crash.reason
    assert judge("timeout", None, BEST, p, MEASURED).status == "timeout"
    assert judge("ok", 0.999, BEST, p, MEASURED, earlier=[0.998]).reason.startswith("confirm: mean 0.998500")
