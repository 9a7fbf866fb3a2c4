"""A trainer's `if __name__ == "__main__"`: a GitarError ends `python train.py` by hand as it ends
a run under gitar's launcher, as its one line on stderr and its exit code (2 for a bad model.json
or $GITAR_SEED: the input is the agent's to fix), never as a traceback.

Under the launcher (gitar/runtime/launch.py) the error is left to it: it writes the crash record
with the phase and the steps taken, then prints the same line and exits with the same code.
"""

from __future__ import annotations

from collections.abc import Callable

from gitar.errors import GitarError
from gitar.runtime.crash import report

# Set by the launcher before it runs the trainer. A module of its own, not the launcher's, since
# `python -m gitar.runtime.launch` runs that module as __main__ and an import of it by name
# would make a second copy with a flag of its own.
_launched = False


def mark_launched() -> None:
    """This process is gitar's launcher: trainers leave their GitarErrors to it."""
    global _launched
    _launched = True


def run_main(main: Callable[[], object]) -> None:
    """main(), with a GitarError turned into its line and exit code unless the launcher handles it."""
    if _launched:
        main()
        return
    try:
        main()
    except GitarError as e:
        raise SystemExit(report(e)) from None
