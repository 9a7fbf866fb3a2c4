"""BOS-aligned best-fit packing of tokenized documents into training rows, and its prefetch thread.

The rule (upstream autoresearch's): every row holds exactly `row_capacity` tokens and starts
at a document start, so no row is padded and no document is read from its middle. Before
each placement the buffer is topped up to `buffer_size` documents, whole batches at a time.
Into the space left in a row goes the longest buffered document that fits (the earliest
buffered one on ties); when none fits, the shortest document (earliest on ties) is cropped
to fill the row exactly and its tail is dropped.

Upstream finds those documents with a linear scan of a Python list: O(buffer) per placement,
1-2 M tokens/s on short documents (benchmarks/bench_packing.py), with the GIL held all along.
`DocumentBuffer` keeps the documents in per-length FIFO queues plus a sorted list of the
lengths present, so both lookups are a bisection. The list scan kept its documents in
insertion order, so "earliest on ties" is the head of the FIFO of that length: the rows
come out identical, token for token.

`Prefetcher` runs a producer (tokenize + pack + copy) in a background thread a few
batches ahead, so the training step never waits for packing.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

T = TypeVar("T")

# One tokenized document: its token ids, beginning with BOS. The dataloader hands over int64
# arrays built by `with_bos` from the tokenizer's own buffers, so no token ever becomes a
# Python int on the way; plain lists work too (the copy into a row then converts each int).
Doc = list[int] | npt.NDArray[np.int64]
# A batch from the document source: documents, and the epoch (1-based pass over the shards)
# the batch was read in.
DocBatch = tuple[Sequence[Doc], int]


def with_bos(token_arrays: Sequence[npt.NDArray[np.integer[Any]]], bos: int) -> list[npt.NDArray[np.int64]]:
    """Each array of token ids with `bos` in front, as int64 views into one buffer per batch.

    One concatenation for the whole batch: a few numpy calls per batch instead of per document.
    """
    marker = np.array([bos], dtype=np.int64)
    parts = [part for tokens in token_arrays for part in (marker, tokens)]
    flat = np.concatenate(parts, dtype=np.int64) if parts else np.empty(0, dtype=np.int64)
    ends = np.cumsum([len(tokens) + 1 for tokens in token_arrays]).tolist()
    return [flat[end - len(tokens) - 1 : end] for tokens, end in zip(token_arrays, ends, strict=True)]


class DocumentBuffer:
    """A multiset of documents with O(log n) "longest that fits" and "shortest", FIFO on ties."""

    def __init__(self) -> None:
        self._by_length: dict[int, deque[Doc]] = {}
        self._lengths: list[int] = []  # the distinct lengths present, ascending
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, doc: Doc) -> None:
        n = len(doc)
        if n == 0:
            raise ValueError("an empty document cannot start a row; every document needs its BOS token")
        fifo = self._by_length.get(n)
        if fifo is None:
            self._by_length[n] = deque([doc])
            insort(self._lengths, n)
        else:
            fifo.append(doc)
        self._count += 1

    def pop_longest_fitting(self, space: int) -> Doc | None:
        """The earliest-added of the longest documents with at most `space` tokens, or None."""
        i = bisect_right(self._lengths, space)
        return self._pop_at(i - 1) if i else None

    def pop_shortest(self) -> Doc:
        """The earliest-added of the shortest documents (the buffer must not be empty)."""
        if not self._lengths:
            raise IndexError("pop from an empty DocumentBuffer")
        return self._pop_at(0)

    def _pop_at(self, i: int) -> Doc:
        n = self._lengths[i]
        fifo = self._by_length[n]
        doc = fifo.popleft()
        if not fifo:
            del self._by_length[n]
            del self._lengths[i]
        self._count -= 1
        return doc


class BestFitPacker:
    """Turns a stream of document batches into rows of exactly `row_capacity` tokens."""

    def __init__(self, doc_batches: Iterator[DocBatch], row_capacity: int, buffer_size: int) -> None:
        if row_capacity < 1 or buffer_size < 1:
            raise ValueError(f"row_capacity and buffer_size must be positive, got {row_capacity}, {buffer_size}")
        self._batches = doc_batches
        self._buffer = DocumentBuffer()
        self.row_capacity = row_capacity
        self.buffer_size = buffer_size
        self.epoch = 0  # the epoch of the most recently read batch; 0 before the first

    def _top_up(self) -> None:
        while len(self._buffer) < self.buffer_size:
            try:
                docs, self.epoch = next(self._batches)
            except StopIteration:
                raise RuntimeError("the document source ran dry; it must yield batches forever") from None
            for doc in docs:
                self._buffer.add(doc)

    def next_rows(self, n: int) -> npt.NDArray[np.int64]:
        """The next n rows as an int64 array of shape (n, row_capacity)."""
        out = np.empty((n, self.row_capacity), dtype=np.int64)
        for row in out:
            self._fill(row)
        return out

    def _fill(self, row: npt.NDArray[np.int64]) -> None:
        buffer, pos, end = self._buffer, 0, self.row_capacity
        while pos < end:
            if len(buffer) < self.buffer_size:
                self._top_up()
            doc = buffer.pop_longest_fitting(end - pos)
            if doc is None:  # nothing fits: the shortest document fills the rest, its tail is dropped
                row[pos:] = buffer.pop_shortest()[: end - pos]
                return
            row[pos : pos + len(doc)] = doc
            pos += len(doc)


# ---------------------------------------------------------------------------
# Prefetching in a background thread
# ---------------------------------------------------------------------------


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
# How often a blocked producer or consumer looks up to see whether it should stop.
_POLL_S = 0.05
# Producers still running when the interpreter exits (a loader nobody closed, as training
# scripts usually leave theirs). Left alone, a daemon thread caught inside native code (a
# torch copy, the tokenizer) while the runtime tears down aborts the process, and a run
# that succeeded would exit as a crash.
_LIVE: weakref.WeakSet[Prefetcher[Any]] = weakref.WeakSet()


@atexit.register
def _stop_live_producers() -> None:
    for prefetcher in list(_LIVE):
        prefetcher.close()


class Prefetcher(Generic[T]):
    """Iterates `make_items()` in a daemon thread, up to `depth` items ahead of the consumer.

    The iterator is created inside the thread, so a generator never runs on two threads.
    An exception in the producer is raised in the consumer at the point it would have
    surfaced; `close()` (or leaving the `with` block) stops the thread and closes the
    producer's iterator.
    """

    def __init__(self, make_items: Callable[[], Iterator[T]], depth: int = 2, name: str = "gitar-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._make_items = make_items
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            items = self._make_items()
            try:
                for item in items:
                    if not self._put(item):
                        return
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, which decides what is fatal
            self._put(_Failure(error))

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return cast(T, item)  # the producer queues only T besides the two markers

    def close(self, timeout: float = 5.0) -> None:
        """Stop the producer and wait (up to `timeout` s) for its thread to end."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
