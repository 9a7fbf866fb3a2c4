"""The run's seed: $GITAR_SEED when gitar sets one (each re-measurement of the best gets its own),
upstream's 42 otherwise.

A value that is not a seed is the agent's or the user's to fix, so it is one line and exit 2
(GitarError), never a traceback.
"""

from __future__ import annotations

import os

from gitar import shared
from gitar.errors import GitarError

DEFAULT_SEED = 42  # the seed upstream always used, so runs stay comparable with its numbers


def read_seed() -> int:
    """$GITAR_SEED as a non-negative 63-bit integer, DEFAULT_SEED when unset or empty."""
    raw = os.environ.get(shared.SEED, "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**63:
        raise GitarError(f"{shared.SEED}: expected a non-negative integer, got {raw!r}; "
                         f"set e.g. {shared.SEED}={DEFAULT_SEED} or unset it")
    return seed
