"""One spelling for every val_bpb and every delta gitar prints or writes as JSON.

A best measured several times is a mean, and the mean of numbers recorded to 6 decimals
often lies exactly halfway between two 6-decimal numbers (1.5150155). Summed in another
order, with math.fsum, or updated run by run, the float lands a hair above or below that
half, and formatting each with `:.6f` printed 1.515015 in one command and 1.515016 in the
next. So a value within a millionth of a unit below such a half counts as the half — far
above float noise, far below anything a measurement resolves — which maps all those
computations to one number, rounded to 6 decimals (halves up) once. A delta is the
difference of the two numbers as printed, so the best plus the delta is the value on the
page, in the result line, `log` and `memory` alike.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

PLACES = 6  # what the records store and every command prints
_UNIT = 10.0**PLACES
# The first 1e-6 units below a half count as the half: a mean computed in another order misses
# it by ~1e-9 units (float noise), and nothing a measurement resolves lies that close to it.
_HALF = 0.5 - 1e-6


def rounded(value: float, _floor: Callable[[float], int] = math.floor) -> float:
    """val_bpb (or a mean of them, or a delta) as it is printed and stored; halves round up.

    Float arithmetic, not `round(x, 6)` (a decimal conversion per call): `gitar log` rounds
    twice per attempt over 10,000 attempts.
    """
    if not math.isfinite(value):
        return value
    scaled = value * _UNIT
    units = _floor(scaled)
    return (units + 1 if scaled - units >= _HALF else units) / _UNIT


def bpb(value: float) -> str:
    """val_bpb as text, e.g. 0.997900."""
    return f"{rounded(value):.{PLACES}f}"


def delta(value: float, best: float) -> float:
    """value − best, from the two numbers as printed."""
    return rounded(rounded(value) - rounded(best))


def signed(difference: float) -> str:
    """A delta as text, e.g. -0.003100 (never -0.000000)."""
    return f"{rounded(difference) or 0.0:+.{PLACES}f}"  # -0.0 is falsy: no "-0.000000"


def per_second(rate: float) -> str:
    """A throughput as text, three significant figures: 812, 98.5k, 1.23M (tokens/s)."""
    # Branches, not a loop over the scales: `gitar log` prints 10,000 of these.
    if rate >= 999.5e3:  # 999,950 reads 1M, not 1e+03k
        return f"{rate / 1e6:.3g}M" if rate < 999.5e6 else f"{rate / 1e9:.3g}G"
    return f"{rate / 1e3:.3g}k" if rate >= 999.5 else f"{rate:.0f}"


def iso_time(t: float) -> str:
    """A time as every record spells it: ISO 8601 in UTC, to the millisecond.

    Milliseconds: a fast loop starts several runs a second, and review orders attempts by start.
    """
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def number_or_none(v: object) -> float | None:
    """A JSON value as a number, None for anything else: a file or summary another process wrote
    (running.json, the evaluator's result, train.py's summary) may hold any type, and a bool is
    no number though Python counts it as an int."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
