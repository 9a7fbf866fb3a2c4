"""The files prepare.evaluate_bpb reads, and their hashes: the data pin's side that needs no git.

Torch-free and git-free: the harness evaluator imports it in a process of its own (pygit2's
import alone costs it a second).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from gitar.config.schema import Ground

HASH_CHUNK = 1 << 20  # bytes read at a time: a shard is hashed without holding it in memory


# The tokenizer upstream's prepare.py writes (a pickled tiktoken encoding); gitar's writes ranks.tiktoken
# and manifest.json. A cache with the first and without gitar's manifest is upstream's.
UPSTREAM_TOKENIZER = "tokenizer.pkl"


def upstream_layout(cache: Path) -> bool:
    tok = cache / "tokenizer"
    return (tok / UPSTREAM_TOKENIZER).is_file() and not (tok / "manifest.json").exists()


def evaluation_files(ground: Ground) -> dict[str, Path]:
    """The files prepare.evaluate_bpb reads, by their path in the cache (prepare.py's layout)."""
    cache = ground.cache_dir
    val = f"data/shard_{ground.data.val_shard:05d}.parquet"
    if upstream_layout(cache):
        # A cache karpathy/autoresearch's prepare.py made: its tokenizer, read in place.
        names: tuple[str, ...] = (f"tokenizer/{UPSTREAM_TOKENIZER}", "tokenizer/token_bytes.pt", val)
    else:
        names = ("tokenizer/manifest.json", "tokenizer/ranks.tiktoken", "tokenizer/token_bytes.pt", val)
    return {name: cache / name for name in names}


def hash_evaluation_data(ground: Ground) -> dict[str, str] | None:
    """sha256 of each evaluation file; None if any is missing (the data is not prepared)."""
    out: dict[str, str] = {}
    for name, path in evaluation_files(ground).items():
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    h.update(chunk)
        except OSError:
            return None
        out[name] = h.hexdigest()
    return out


def data_digest(files: Mapping[str, str]) -> str:
    """One hash over the per-file hashes, for the record."""
    return hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def changed_files(expected: Mapping[str, str], actual: Mapping[str, str] | None) -> list[str]:
    if actual is None:
        return sorted(expected)
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
