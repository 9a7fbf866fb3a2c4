"""One spelling for every val_bpb and every delta gitar prints or writes as JSON.

A best measured several times is a mean, and the mean of numbers recorded to 6 decimals
often lies exactly halfway between two 6-decimal numbers (1.5150155). Summed in another
order, with math.fsum, or updated run by run, the float lands a hair above or below that
half, and formatting each with `:.6f` printed 1.515015 in one command and 1.515016 in the
next. So every value is first collapsed to 9 decimals — far above float noise, far below
anything a measurement resolves — which maps all those computations to one float, then
rounded to 6 once. A delta is the difference of the two numbers as printed, so the best
plus the delta is the value on the page, in the result line, `log` and `memory` alike.
"""

from __future__ import annotations

PLACES = 6  # what the records store and every command prints
_COLLAPSE = 9  # float noise of a mean or a difference is ~1e-15: gone at 9 decimals


def rounded(value: float) -> float:
    """val_bpb (or a mean of them, or a delta) as it is printed: for JSON output."""
    return round(round(value, _COLLAPSE), PLACES)


def bpb(value: float) -> str:
    """val_bpb as text, e.g. 0.997900."""
    return f"{round(value, _COLLAPSE):.{PLACES}f}"


def delta(value: float, best: float) -> float:
    """value − best, from the two numbers as printed."""
    return rounded(rounded(value) - rounded(best))


def signed(difference: float) -> str:
    """A delta as text, e.g. -0.003100 (never -0.000000)."""
    return f"{rounded(difference) or 0.0:+.{PLACES}f}"  # -0.0 is falsy: no "-0.000000"
