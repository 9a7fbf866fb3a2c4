"""What a reader should doubt about a number: a keep within the noise, a throughput far from the best's.

Display only: the verdict stands. The result line, `gitar log`, `gitar show` and git's own
one-line summaries flag the same runs because they all ask here.
"""

from __future__ import annotations

from gitar.store.records import KEEP

# A run whose tokens/s is more than this factor below or above the best's is flagged: on a machine
# other work keeps busy the same model trained 16 steps in one run and 106 in another, and its
# val_bpb followed the load, not the idea. Both numbers are train.py's claims, so this only warns.
THROUGHPUT_FACTOR = 1.25


def throughput_flag(rate: float | None, best_rate: float | None) -> str | None:
    """The warning for a throughput far from the best's, e.g. "throughput 0.40x the best's: ..."."""
    if rate is None or best_rate is None or rate <= 0 or best_rate <= 0:
        return None
    ratio = rate / best_rate
    if 1 / THROUGHPUT_FACTOR <= ratio <= THROUGHPUT_FACTOR:
        return None
    why = "the machine may be busy" if ratio < 1 else "the best may have run on a busy machine"
    return f"throughput {ratio:.2f}x the best's: {why}"


def noise_flag(status: str, kind: str, change: float | None, sigma: float | None) -> str | None:
    """The warning for a keep whose improvement is no larger than the measured noise σ."""
    if status != KEEP or kind not in ("attempt", "confirm") or change is None or sigma is None:
        return None
    gain = -change
    if gain > sigma:
        return None
    return f"within noise: improved {gain:.6f}, σ {sigma:.6f}; `gitar run --repeat 3` re-measures it"
