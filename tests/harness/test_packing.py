"""gitar/runtime/packing.py: the fast best-fit packer against the plain reference, and the prefetch thread."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from gitar.runtime import packing
from gitar.runtime.packing import BestFitPacker, DocBatch, DocumentBuffer, Prefetcher, with_bos
from testing.packing import reference_rows

BOS = 0




def random_documents(rng: random.Random, count: int, lengths: list[int]) -> list[list[int]]:
    """Documents with distinct token ids (doc k holds 1000 * k + j), so a wrong pick shows even
    when the chosen document has the right length."""
    return [[BOS] + [1000 * k + j for j in range(1, rng.choice(lengths))] for k in range(1, count + 1)]


def batches_of(docs: list[list[int]], rng: random.Random, max_batch: int, docs_per_epoch: int) -> Iterator[DocBatch]:
    """Batches of 1..max_batch documents, with the epoch advancing every docs_per_epoch documents."""
    i = 0
    while i < len(docs):
        n = rng.randint(1, max_batch)
        yield docs[i : i + n], 1 + i // docs_per_epoch
        i += n


CASES = [
    # (row capacity, buffer size, document lengths to draw from): few distinct lengths make many ties
    (9, 1, [1, 2, 3, 4, 5]),
    (9, 3, [1, 2, 3, 4, 5, 9, 10, 20]),
    (17, 10, [2, 2, 2, 3, 5, 8, 8, 16, 17, 18]),
    (65, 50, list(range(1, 140))),
    (33, 40, [4, 4, 4, 4, 7, 7, 12, 30, 31, 32, 33, 34, 100]),
    (2049, 100, [1, 50, 50, 200, 200, 700, 1500, 2048, 2049, 2050, 5000]),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("capacity", "buffer_size", "lengths"), CASES)
def test_fast_packer_equals_reference(capacity: int, buffer_size: int, lengths: list[int], seed: int) -> None:
    rng = random.Random(seed * 7919 + capacity)
    docs = random_documents(rng, 4000, lengths)
    n_rows = 60
    batch_seed = rng.random()
    expected, expected_epochs = reference_rows(
        batches_of(docs, random.Random(batch_seed), 7, 500), capacity, buffer_size, n_rows)

    packer = BestFitPacker(batches_of(docs, random.Random(batch_seed), 7, 500), capacity, buffer_size)
    got, epochs = [], []
    for _ in range(n_rows // 3):
        block = packer.next_rows(3)
        assert block.shape == (3, capacity) and block.dtype == np.int64
        got += block.tolist()
        epochs += [packer.epoch] * 3
    assert got == expected
    # The epoch reported with a batch is the one of the last document batch read for it.
    assert epochs[2::3] == expected_epochs[2::3]


def test_array_documents_pack_like_lists() -> None:
    rng = random.Random(3)
    docs = random_documents(rng, 3000, [1, 3, 3, 8, 20, 40, 41])
    from_lists = BestFitPacker(iter([(docs, 1)]), 33, 200).next_rows(50)
    from_arrays = BestFitPacker(iter([([np.array(d, dtype=np.int64) for d in docs], 1)]), 33, 200).next_rows(50)
    assert np.array_equal(from_lists, from_arrays)


def test_rows_start_with_bos_and_have_no_padding() -> None:
    rng = random.Random(5)
    docs = random_documents(rng, 5000, list(range(1, 300)))
    rows = BestFitPacker(iter([(docs, 1)]), 257, 100).next_rows(40)
    assert (rows[:, 0] == BOS).all()
    # Every token is a real document token: doc k is BOS, 1000k+1, 1000k+2, ... so after a BOS
    # comes a document's first token, and otherwise the next token of the same document.
    for row in rows.tolist():
        for prev, tok in itertools.pairwise(row):
            if tok != BOS:
                assert tok % 1000 == 1 if prev == BOS else tok == prev + 1


def test_document_buffer_breaks_ties_by_insertion_order() -> None:
    buffer = DocumentBuffer()
    for doc in ([0, 1], [0, 2, 2], [0, 3], [0, 4, 4], [0, 5]):
        buffer.add(doc)
    assert buffer.pop_longest_fitting(2) == [0, 1]
    assert buffer.pop_longest_fitting(2) == [0, 3]
    assert buffer.pop_longest_fitting(1) is None
    assert buffer.pop_shortest() == [0, 5]
    assert buffer.pop_longest_fitting(100) == [0, 2, 2]
    assert len(buffer) == 1
    assert buffer.pop_shortest() == [0, 4, 4]
    with pytest.raises(IndexError):
        buffer.pop_shortest()


def test_empty_documents_are_refused() -> None:
    with pytest.raises(ValueError, match="BOS"):
        DocumentBuffer().add([])


def test_packer_reports_a_dry_source() -> None:
    packer = BestFitPacker(iter([([[BOS, 1, 2]], 1)]), 8, 4)
    with pytest.raises(RuntimeError, match="ran dry"):
        packer.next_rows(1)


def test_with_bos_prefixes_each_document() -> None:
    tokens = [np.array([5, 6], dtype=np.uint32), np.array([], dtype=np.uint32), np.array([4_000_000_000], dtype=np.uint32)]
    docs = with_bos(tokens, 7)
    assert [d.tolist() for d in docs] == [[7, 5, 6], [7], [7, 4_000_000_000]]
    assert all(d.dtype == np.int64 for d in docs)
    assert with_bos([], 7) == []


# ---------------------------------------------------------------------------
# Prefetcher
# ---------------------------------------------------------------------------


def test_prefetcher_yields_everything_in_order() -> None:
    with Prefetcher(lambda: iter(range(100)), depth=3) as items:
        assert list(items) == list(range(100))
        assert list(items) == []  # stays exhausted


def test_prefetcher_raises_the_producers_error_after_its_items() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("shard 7 is corrupt")

    items = Prefetcher(produce, depth=1)
    assert next(items) == 1
    assert next(items) == 2
    with pytest.raises(KeyError, match="shard 7 is corrupt") as info:
        next(items)
    # The traceback still shows where the producer failed.
    assert any(frame.name == "produce" for frame in info.traceback)
    with pytest.raises(StopIteration):
        next(items)
    items.close()
    assert not items.alive


def test_close_stops_a_blocked_producer_and_closes_its_iterator() -> None:
    closed = threading.Event()

    def forever() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    items = Prefetcher(forever, depth=2)
    assert next(items) == 0
    time.sleep(0.2)  # let the producer fill the queue and block on it
    assert items.alive
    items.close()
    assert not items.alive
    assert closed.is_set()
    with pytest.raises(StopIteration):
        next(items)


def test_iterator_is_created_in_the_producer_thread() -> None:
    seen: list[str] = []

    def produce() -> Iterator[int]:
        seen.append(threading.current_thread().name)
        yield 1

    with Prefetcher(produce, name="gitar-test-producer") as items:
        assert list(items) == [1]
    assert seen == ["gitar-test-producer"]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(lambda: iter([]), depth=0)


def test_producers_left_running_are_stopped_at_exit() -> None:
    # What the atexit hook does: a loader nobody closed must not run into interpreter teardown.
    items = Prefetcher(lambda: itertools.count(), depth=2)
    next(items)
    assert items.alive
    packing._stop_live_producers()
    assert not items.alive
