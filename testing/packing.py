"""The best-fit packing rule as written: the plain reference gitar/runtime/packing.py and prepare.py's reading are checked against."""

from __future__ import annotations

from collections.abc import Iterator

from gitar.runtime.packing import DocBatch


def reference_rows(batches: Iterator[DocBatch], row_capacity: int, buffer_size: int,
                   n_rows: int) -> tuple[list[list[int]], list[int]]:
    """The rule as written: a list of documents scanned front to back.

    Before each placement top the list up to buffer_size (whole batches, appended at the end);
    take the longest document that fits the space left (the first such one in the list);
    if none fits, crop the shortest (the first such one) to fill the row. Returns the rows
    and the epoch after each row.
    """
    buffer: list[list[int]] = []
    epoch = 0
    rows, epochs = [], []
    for _ in range(n_rows):
        row: list[int] = []
        while len(row) < row_capacity:
            while len(buffer) < buffer_size:
                docs, epoch = next(batches)
                buffer.extend(list(d) for d in docs)
            space = row_capacity - len(row)
            best = -1
            for i, doc in enumerate(buffer):
                if len(doc) <= space and (best < 0 or len(doc) > len(buffer[best])):
                    best = i
            if best >= 0:
                row.extend(buffer.pop(best))
            else:
                shortest = 0
                for i, doc in enumerate(buffer):
                    if len(doc) < len(buffer[shortest]):
                        shortest = i
                row.extend(buffer.pop(shortest)[:space])
        rows.append(row)
        epochs.append(epoch)
    return rows, epochs
