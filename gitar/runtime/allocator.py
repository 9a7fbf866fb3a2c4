"""CPU runs: keep freed large blocks in the process instead of handing them back to the OS.

glibc returns every freed block of 32 MB or more to the OS, and the next one of that size is
faulted in again page by page. Logits ([batch, seq, vocab] in float32: 32 MB on the CPU preset)
and the optimizer's stacked matrices are that big, so every forward pays it: measured on a
2-core VM, a third of a smoke step's time, and the harness evaluation's forwards ran 2.5x
slower than the same forwards in a process that keeps its memory. Used by train.py and by
gitar's evaluator; the numbers computed do not change, only how long they take.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused after free
TRIM_THRESHOLD = (1 << 31) - 1  # the heap is not shrunk until 2 GiB sit free at its top (a C int)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where there is nothing to tune (not Linux, not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
