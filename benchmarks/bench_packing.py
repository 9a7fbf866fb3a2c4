"""Packing throughput: the plain best-fit scan vs gitar/runtime/packing.py, and the cost of `prepare.py --source`.

Usage (from the repository root): .venv/bin/python -m benchmarks.bench_packing [--runs 5] [--skip-prepare]

Documents: the embedded stdlib corpus (gitar/demo/corpus.py), tokenized with a BPE tokenizer trained
on it with the shipped ground.json settings (vocabulary 8192), BOS first: real, short documents.
Both packers get the same documents, buffer 1000 and rows of T + 1 = 2049 tokens, write into
the same int64 array, and must produce identical rows. Runs on one core (pinned, one thread);
prints the median of --runs runs. Then times `python prepare.py --source` on the full corpus
with the CPU preset (the README figure), cold and warm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rustbpe
import tiktoken
import torch

from gitar import shared
from gitar.config.schema import read_json_object
from gitar.demo.corpus import collect_documents, write_corpus
from gitar.demo.presets import cpu_ground
from gitar.runtime.packing import BestFitPacker, Doc, DocBatch, with_bos

REPO = Path(__file__).resolve().parents[1]

T = 2048
BUFFER = 1000
BATCH_DOCS = 128  # documents per tokenizer batch, as the dataloader reads them
ROWS_REFERENCE = 64  # rows per timed run: ~0.1-0.3 s for the scan
ROWS_FAST = 1024


def pin_to_one_core() -> None:
    # One thread for torch, and one core for everything (rayon, tiktoken, numpy included).
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def tokenized_corpus() -> tuple[list[list[int]], list[npt.NDArray[np.int64]]]:
    """The corpus as token lists (Tokenizer.encode) and as the dataloader gets it (encode_arrays)."""
    ground = read_json_object(REPO / "ground.json")["tokenizer"]
    texts = collect_documents()
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), ground["vocab_size"] - len(ground["special_tokens"]),
                                pattern=ground["split_pattern"])
    ranks = {bytes(k): v for k, v in trainer.get_mergeable_ranks()}
    enc = tiktoken.Encoding(name="bench", pat_str=ground["split_pattern"], mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(ground["special_tokens"])})
    bos = enc.encode_single_token(ground["bos_token"])
    lists = [[bos, *ids] for ids in enc.encode_ordinary_batch(texts, num_threads=1)]
    raw = [enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=()) for t in texts]
    arrays = [a for i in range(0, len(raw), BATCH_DOCS) for a in with_bos(raw[i : i + BATCH_DOCS], bos)]
    return lists, arrays


def reference_pack(batches: Iterator[DocBatch], capacity: int, buffer_size: int, n_rows: int) -> npt.NDArray[np.int64]:
    """The rule as written: scan the buffer list for the longest document that fits (first on
    ties), else crop the shortest (first on ties); top up to buffer_size before every pick."""
    out = np.empty((n_rows, capacity), dtype=np.int64)
    buffer: list[Doc] = []
    for row in out:
        pos = 0
        while pos < capacity:
            while len(buffer) < buffer_size:
                buffer.extend(next(batches)[0])
            space = capacity - pos
            best, best_len = -1, 0
            for i, doc in enumerate(buffer):
                if best_len < len(doc) <= space:
                    best, best_len = i, len(doc)
            if best >= 0:
                doc = buffer.pop(best)
                row[pos : pos + len(doc)] = doc
                pos += len(doc)
            else:
                shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                row[pos:] = buffer.pop(shortest)[:space]
                pos = capacity
    return out


def endless(docs: Sequence[Doc]) -> Iterator[DocBatch]:
    epoch = 1
    while True:
        for i in range(0, len(docs), BATCH_DOCS):
            yield docs[i : i + BATCH_DOCS], epoch
        epoch += 1


def fast_pack(batches: Iterator[DocBatch], capacity: int, buffer_size: int, n_rows: int) -> npt.NDArray[np.int64]:
    return BestFitPacker(batches, capacity, buffer_size).next_rows(n_rows)


def tokens_per_second(pack: Callable[..., npt.NDArray[np.int64]], docs: Sequence[Doc], n_rows: int,
                      runs: int) -> tuple[float, npt.NDArray[np.int64]]:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        rows = pack(endless(docs), T + 1, BUFFER, n_rows)
        rates.append(rows.size / (time.perf_counter() - start))
    return statistics.median(rates), rows


def bench_packing(runs: int) -> None:
    t0 = time.perf_counter()
    lists, arrays = tokenized_corpus()
    lengths = sorted(len(d) for d in lists)
    print(f"documents: {len(lists)} stdlib docstrings, tokens per document: median {lengths[len(lengths) // 2]}, "
          f"mean {sum(lengths) / len(lengths):.0f}, max {lengths[-1]} (tokenized in {time.perf_counter() - t0:.1f}s)")
    print(f"T={T}, buffer={BUFFER} documents, one core, median of {runs} runs")
    forms = (("int64 arrays from the tokenizer's buffers (what the dataloader packs)", arrays),
             ("Python lists (Tokenizer.encode; each token converted when copied)", lists))
    for form, docs in forms:
        ref_rate, ref_rows = tokens_per_second(reference_pack, docs, ROWS_REFERENCE, runs)
        fast_rate, fast_rows = tokens_per_second(fast_pack, docs, ROWS_FAST, runs)
        same = np.array_equal(ref_rows, fast_rows[:ROWS_REFERENCE])
        print(f"  {form}: reference {ref_rate / 1e6:.2f} M tokens/s, gitar {fast_rate / 1e6:.2f} M tokens/s, "
              f"x{fast_rate / ref_rate:.1f}, identical rows: {same}")
        if not same:
            raise SystemExit("the packers disagree")


def bench_prepare() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_corpus(root / "corpus")
        corpus_s = time.perf_counter() - start
        ws = root / "ws"
        ws.mkdir()
        shutil.copy2(REPO / "prepare.py", ws / "prepare.py")
        shutil.copytree(REPO / "gitar", ws / "gitar", ignore=shutil.ignore_patterns("__pycache__"))
        ground = cpu_ground(read_json_object(REPO / "ground.json"))
        ground["data"]["cache_dir"] = str(root / "cache")
        (ws / "ground.json").write_text(json.dumps(ground))
        env = shared.environment(prefixes=("GITAR_",))  # none of gitar's variables from outside
        print(f"write_corpus (full stdlib corpus): {corpus_s:.1f}s")
        for label in ("cold", "warm (nothing to do)"):
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "prepare.py", "--source", str(root / "corpus")], cwd=ws, env=env,
                                    capture_output=True, text=True)
            if result.returncode:
                raise SystemExit(result.stderr)
            print(f"python prepare.py --source <corpus> (CPU preset), {label}: {time.perf_counter() - start:.1f}s")
        print("  " + "\n  ".join(result.stdout.strip().splitlines()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args()
    if not args.skip_prepare:
        bench_prepare()  # before pinning: prepare.py uses all cores, as a user's run would
    pin_to_one_core()
    bench_packing(args.runs)


if __name__ == "__main__":
    main()
