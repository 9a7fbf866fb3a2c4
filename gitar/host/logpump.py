"""The trainer's output, copied into its log by gitar with a bound on its size.

The trainer never holds the log file: it writes into a pipe and a thread of the runner
copies what arrives. Past `head` bytes the log keeps only the latest `tail` bytes after
a marker line saying how much was left out, so a run that prints without end costs at
most head + tail bytes of disk, and the parts people read — how it started, how it
ended, the summary block and the traceback — are always there.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

# How a line gitar itself writes into a run's log starts (header, footer, the cut marker): never the trainer's words.
LOG_PREFIX = "[gitar] "

_CHUNK = 64 * 1024
KEEP_BYTES = 256 * 1024  # the end of the output, also in memory: the summary survives a log that failed


class LogPump(threading.Thread):
    """Copies a pipe into `log` from its current end; keeps head + tail within `cap` bytes."""

    def __init__(self, fd: int, log: BinaryIO, cap: int) -> None:
        super().__init__(name="gitar-log", daemon=True)
        self.fd = fd
        self.log = log
        self.head = cap // 2
        self.tail = cap - self.head
        self.start_at = log.seek(0, os.SEEK_END)
        self.total = 0  # bytes the trainer wrote
        self.left_out = 0  # bytes no longer in the log
        self.error: OSError | None = None  # the log could not be written (full volume)
        self._recent = bytearray()  # the output after the head, at most 2 * tail bytes
        self._end = bytearray()  # the last KEEP_BYTES of the output

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, _CHUNK):
                self._remember(chunk)
                if self.error is None:
                    try:
                        self._take(chunk)
                    except OSError as e:
                        # Keep draining: a trainer blocked on a full pipe would never exit, and
                        # the end of its output is still kept in memory.
                        self.error = e
        except OSError as e:
            self.error = self.error or e

    def _remember(self, chunk: bytes) -> None:
        self._end += chunk
        if len(self._end) > KEEP_BYTES:
            del self._end[: len(self._end) - KEEP_BYTES]

    def end_text(self) -> str:
        """The last KEEP_BYTES of the output, from a line start (the summary block is there)."""
        data = bytes(self._end)
        if self.total > len(data):
            data = data[data.find(b"\n") + 1 :]
        return data.decode("utf-8", errors="replace")

    def _take(self, chunk: bytes) -> None:
        head_left = max(0, self.head - self.total)
        self.total += len(chunk)
        if head_left:
            self.log.write(chunk[:head_left])
            chunk = chunk[head_left:]
            if not chunk:
                return
        self._recent += chunk
        if len(self._recent) <= 2 * self.tail:
            self.log.write(chunk)
            return
        # Over head + 2 * tail: rewrite the log as head, marker, the latest tail bytes.
        drop = len(self._recent) - self.tail
        self.left_out += drop
        del self._recent[:drop]
        self.log.seek(self.start_at + self.head)
        self.log.truncate()
        self.log.write(self.marker())
        self.log.write(bytes(self._recent))

    def marker(self) -> bytes:
        return (f"\n{LOG_PREFIX}... {self.left_out} bytes of output left out here (the log keeps its first "
                f"{self.head} and last {self.tail} bytes; experiment.limits.log_mb) ...\n").encode()
