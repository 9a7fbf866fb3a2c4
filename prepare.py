"""
Data, tokenizer, dataloader, evaluation and platform detection for gitar experiments.

Usage:
    python prepare.py                 # download the shards ground.json names, train the tokenizer
    python prepare.py --source DIR    # offline: build the shards from local .parquet/.txt/.md files

Everything comes from ground.json next to this file. train.py imports the runtime half
(MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, PLATFORM, Tokenizer, get_token_bytes,
make_dataloader, evaluate_bpb). This file is user-owned: experiments never change it,
so every experiment is measured by the same data, tokenizer and metric.

Cache layout (data.cache_dir):
    data/shard_NNNNN.parquet     training shards 0..num_train_shards-1 and the pinned val_shard
    tokenizer/ranks.tiktoken     BPE merges, tiktoken's text format (base64 token, rank); not
                                 a pickle, so loading a cache copied from elsewhere runs no code
    tokenizer/token_bytes.pt     int32 bytes every token id counts for in val_bpb (0 for special
                                 tokens), by the rule tokenizer.token_bytes names
    tokenizer/manifest.json      what the tokenizer was trained for and the token bytes' rule; written last
    kernels/                     FlashAttention 3 for this GPU, when the `kernels` extra is installed
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import rustbpe
import tiktoken
import torch
import torch.nn.functional as F

from gitar.runtime.contract import GitarError, Ground, load_ground, remove_stale_temps, write_durable
from gitar.runtime.download import download_shards
from gitar.runtime.ingest import ingest_source
from gitar.runtime.packing import BestFitPacker, DocBatch, Prefetcher, with_bos
from gitar.runtime.platform import (
    KERNELS_DIR,
    Platform,
    detect_platform,
    fetch_flash_attention_3,
    probe_device,
)

__all__ = [
    "EVAL_TOKENS", "GROUND", "MAX_SEQ_LEN", "PLATFORM", "TIME_BUDGET", "TOKEN_BYTES_RULE", "Tokenizer",
    "evaluate_bpb", "get_token_bytes", "make_dataloader",
]

# ---------------------------------------------------------------------------
# Configuration (from ground.json: change it there, not here)
# ---------------------------------------------------------------------------


def _load_ground() -> Ground:
    # Runs at import, so `python prepare.py` and `python train.py` both stop with one line.
    try:
        return load_ground(Path(__file__).with_name("ground.json"))
    except GitarError as e:
        print(e.message, file=sys.stderr)
        raise SystemExit(int(e.code)) from None


GROUND: Ground = _load_ground()
MAX_SEQ_LEN: int = GROUND.training.max_seq_len  # context length of training and evaluation rows
TIME_BUDGET: float = GROUND.training.budget_s  # seconds of training (startup and compilation excluded)
EVAL_TOKENS: int = GROUND.training.eval_tokens  # validation tokens per evaluation
# How many bytes a token counts for in val_bpb: "utf8-decoded" (upstream's, the default) or "raw".
TOKEN_BYTES_RULE: str = GROUND.tokenizer.token_bytes

CACHE_DIR = GROUND.cache_dir
DATA_DIR = CACHE_DIR / "data"
TOKENIZER_DIR = CACHE_DIR / "tokenizer"
TEXT_COLUMN = GROUND.data.text_column
TRAIN_SHARDS = tuple(f"shard_{i:05d}.parquet" for i in range(GROUND.data.num_train_shards))
VAL_SHARD = f"shard_{GROUND.data.val_shard:05d}.parquet"  # pinned: every experiment sees the same

RANKS_FILE = "ranks.tiktoken"
TOKEN_BYTES_FILE = "token_bytes.pt"
MANIFEST_FILE = "manifest.json"
UPSTREAM_TOKENIZER = "tokenizer.pkl"  # karpathy/autoresearch's prepare.py: never overwritten here

# ---------------------------------------------------------------------------
# Platform: device, number format, attention kernel, compiler (gitar/runtime/platform.py)
# ---------------------------------------------------------------------------

# FA3 builds fetched by `python prepare.py` (the `kernels` extra): in the data cache, where the
# sandboxed trainer can read them (it sees neither HOME's caches nor the network).
FA3_DIR = CACHE_DIR / KERNELS_DIR
# Detected once, at import; cheap: reads device properties, loads no kernel.
PLATFORM: Platform = detect_platform(GROUND.processor, probe_device(FA3_DIR))


# ---------------------------------------------------------------------------
# Data: the shards ground.json names, downloaded or built from local files
# ---------------------------------------------------------------------------


def download_data() -> None:
    """Fetch every training shard and the pinned validation shard that is not already here
    (in parallel, retried, renamed into place only when whole: gitar/runtime/download.py)."""
    download_shards(GROUND.data.base_url, [*TRAIN_SHARDS, VAL_SHARD], DATA_DIR, TEXT_COLUMN,
                    GROUND.data.download_retries)


def prepare_source(source: Path) -> None:
    """`--source DIR`: the same shards from local .parquet/.txt/.md files, every 10th document
    held out for validation (gitar/runtime/ingest.py)."""
    ingest_source(source, DATA_DIR, TRAIN_SHARDS, VAL_SHARD, TEXT_COLUMN)


def _not_prepared(where: Path) -> GitarError:
    return GitarError(f"data not prepared in {where}: run `python prepare.py` (or `--source DIR` offline)")


# ---------------------------------------------------------------------------
# Tokenizer training (rustbpe, then tiktoken for fast encoding)
# ---------------------------------------------------------------------------

TOKENIZER_MAX_CHARS = 1_000_000_000  # as upstream: ~1 GB of text is plenty for an 8k vocabulary
TOKENIZER_DOC_CAP = 10_000  # characters per document: a few huge documents must not dominate the merges
# Round trip after training: mixed scripts, digits, and a character outside the BMP.
ROUND_TRIP_TEXT = "Hello world! Numbers: 1234. Unicode: 你好, naïve café, emoji 🙂"


def _tokenizer_config() -> dict[str, Any]:
    t = GROUND.tokenizer
    return {"vocab_size": t.vocab_size, "split_pattern": t.split_pattern,
            "special_tokens": list(t.special_tokens), "bos_token": t.bos_token}


# The manifest key naming the rule token_bytes.pt was computed with; a manifest without it was
# written before the rule was configurable, when gitar counted raw bytes.
BYTES_RULE_KEY = "token_bytes"
LEGACY_BYTES_RULE = "raw"


def _manifest_bytes_rule(manifest: dict[str, Any]) -> str:
    return str(manifest.get(BYTES_RULE_KEY, LEGACY_BYTES_RULE))


def _bytes_rule_refusal(directory: Path, manifest: dict[str, Any]) -> GitarError | None:
    have = _manifest_bytes_rule(manifest)
    if have == TOKEN_BYTES_RULE:
        return None
    # A table for another rule would silently change val_bpb (CJK and emoji text the most).
    return GitarError(f"{directory / TOKEN_BYTES_FILE} counts token bytes by the rule {have!r}, ground.json "
                      f"tokenizer.token_bytes asks for {TOKEN_BYTES_RULE!r}: run `python prepare.py` "
                      "(rewrites the table only)")


def _shard_fingerprint(path: Path) -> list[Any]:
    # Name, size and modification time: cheap, and shards are only ever replaced whole
    # (atomic rename), so a changed shard always changes at least its mtime.
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _wanted_manifest() -> dict[str, Any]:
    return {**_tokenizer_config(), "train_shards": [_shard_fingerprint(DATA_DIR / n) for n in TRAIN_SHARDS],
            BYTES_RULE_KEY: TOKEN_BYTES_RULE}


def _write_token_bytes(enc: tiktoken.Encoding, manifest: dict[str, Any]) -> None:
    """token_bytes.pt by the configured rule, then the manifest that names it (last, as always)."""
    table = _token_byte_lengths(enc, GROUND.tokenizer.special_tokens, TOKEN_BYTES_RULE)
    write_durable(TOKENIZER_DIR / TOKEN_BYTES_FILE, lambda tmp: torch.save(table, tmp))
    write_durable(TOKENIZER_DIR / MANIFEST_FILE, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))


def _row_groups(path: Path) -> Iterator[list[Any]]:
    """The text column of a shard, one row group at a time, in file order.

    Upstream's reading order: the dataloader cuts each row group into tokenizer batches, so the
    batches (and so the packed rows) follow row-group boundaries. pyarrow's iter_batches does
    not: its batches run across them, and on shards of several row groups the rows differ.
    """
    parquet = pq.ParquetFile(path)
    for i in range(parquet.num_row_groups):
        yield parquet.read_row_group(i, columns=[TEXT_COLUMN]).column(0).to_pylist()


def _training_texts() -> Iterator[str]:
    chars = 0
    for name in TRAIN_SHARDS:  # never the validation shard
        for texts in _row_groups(DATA_DIR / name):
            for text in texts:
                if not text:
                    continue
                doc = text[:TOKENIZER_DOC_CAP]
                yield doc
                chars += len(doc)
                if chars >= TOKENIZER_MAX_CHARS:
                    return


def _build_encoding(ranks: dict[bytes, int], pattern: str, special_tokens: Sequence[str]) -> tiktoken.Encoding:
    # Special tokens get the ids right after the learned ones, in ground.json's order.
    specials = {name: len(ranks) + i for i, name in enumerate(special_tokens)}
    return tiktoken.Encoding(name="gitar", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def _token_byte_lengths(enc: tiktoken.Encoding, special_tokens: Sequence[str], rule: str) -> torch.Tensor:
    """Bytes each token id counts for in val_bpb, 0 for special tokens (they are not text).

    "utf8-decoded" (upstream's rule, so the same model gives upstream's number): the UTF-8
    length of the token decoded to text on its own. A token holding part of a multi-byte
    character decodes to U+FFFD and counts 3 bytes, whatever it holds. "raw": the bytes the
    token holds, so the lengths of a text's tokens add up to its UTF-8 length exactly.
    """
    special_ids = {enc.encode_single_token(s) for s in special_tokens}

    def length(i: int) -> int:
        raw = enc.decode_single_token_bytes(i)
        return len(raw) if rule == "raw" else len(raw.decode("utf-8", errors="replace").encode("utf-8"))

    return torch.tensor([0 if i in special_ids else length(i) for i in range(enc.n_vocab)], dtype=torch.int32)


def _write_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    lines = (f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    write_durable(path, lambda tmp: tmp.write_text("".join(lines), encoding="ascii"))


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _refuse_upstream_tokenizer() -> None:
    """karpathy/autoresearch's prepare.py made this cache: its token_bytes.pt is read in place and
    never overwritten by gitar's (upstream's train.py evaluates with it)."""
    if (TOKENIZER_DIR / UPSTREAM_TOKENIZER).is_file() and not (TOKENIZER_DIR / MANIFEST_FILE).exists():
        raise GitarError(f"{TOKENIZER_DIR} holds autoresearch's tokenizer ({UPSTREAM_TOKENIZER}, {TOKEN_BYTES_FILE}); "
                         "gitar's prepare.py will not overwrite it: use that repository's prepare.py, or set "
                         "ground.json data.cache_dir to another directory")


def train_tokenizer() -> None:
    """Train the BPE tokenizer on the training shards, unless one trained for the same
    configuration and the same shards is already there."""
    _refuse_upstream_tokenizer()
    manifest_path = TOKENIZER_DIR / MANIFEST_FILE
    for name in TRAIN_SHARDS:
        if not (DATA_DIR / name).is_file():
            raise _not_prepared(DATA_DIR)
    wanted = _wanted_manifest()
    if manifest_path.is_file() and (TOKENIZER_DIR / RANKS_FILE).is_file() and (TOKENIZER_DIR / TOKEN_BYTES_FILE).is_file():
        try:
            have = json.loads(manifest_path.read_text(encoding="utf-8"))
            if have == wanted:
                print(f"tokenizer: already trained for this configuration in {TOKENIZER_DIR}")
                return
            if isinstance(have, dict) and {**have, BYTES_RULE_KEY: TOKEN_BYTES_RULE} == wanted:
                # Only the token bytes' rule changed: the merges stand, the table is rewritten.
                cfg = GROUND.tokenizer
                _write_token_bytes(_build_encoding(_read_ranks(TOKENIZER_DIR / RANKS_FILE), cfg.split_pattern,
                                                   cfg.special_tokens), wanted)
                print(f"tokenizer: token bytes rewritten by the rule {TOKEN_BYTES_RULE!r} (was "
                      f"{_manifest_bytes_rule(have)!r}) in {TOKENIZER_DIR}; val_bpb changes with it, so a branch "
                      "measured on the old table refuses to run: start a new one with `gitar init TAG`")
                return
        except (OSError, ValueError):
            pass  # unreadable manifest or ranks: retrain
    manifest_path.unlink(missing_ok=True)  # from here on, an interrupted run leaves no valid tokenizer

    cfg = GROUND.tokenizer
    t0 = time.time()
    trainer = rustbpe.Tokenizer()
    try:
        trainer.train_from_iterator(_training_texts(), cfg.vocab_size - len(cfg.special_tokens), pattern=cfg.split_pattern)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        enc = _build_encoding(ranks, cfg.split_pattern, cfg.special_tokens)
    except ValueError as e:  # both libraries report a pattern their regex engine rejects this way
        raise GitarError(f"tokenizer: training failed ({e}); check tokenizer.split_pattern in ground.json") from None
    if enc.decode(enc.encode_ordinary(ROUND_TRIP_TEXT)) != ROUND_TRIP_TEXT:
        raise GitarError("tokenizer: round trip failed after training; check tokenizer.split_pattern in ground.json")
    _write_ranks(TOKENIZER_DIR / RANKS_FILE, ranks)
    _write_token_bytes(enc, wanted)
    short = cfg.vocab_size - enc.n_vocab
    note = f" (the corpus yielded {short} fewer merges than tokenizer.vocab_size asks for)" if short else ""
    print(f"tokenizer: trained in {time.time() - t0:.1f}s, vocab size {enc.n_vocab}{note}, saved to {TOKENIZER_DIR}")


# ---------------------------------------------------------------------------
# Runtime: tokenizer (imported by train.py)
# ---------------------------------------------------------------------------


class Tokenizer:
    """The trained BPE tokenizer: tiktoken encoding plus the BOS token."""

    def __init__(self, enc: tiktoken.Encoding, bos_token: str) -> None:
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(bos_token)

    @classmethod
    def from_directory(cls, tokenizer_dir: str | Path | None = None) -> Tokenizer:
        directory = Path(tokenizer_dir) if tokenizer_dir is not None else TOKENIZER_DIR
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
            ranks = _read_ranks(directory / RANKS_FILE)
        except (OSError, ValueError):
            raise _not_prepared(directory) from None
        for key, value in _tokenizer_config().items():
            if manifest.get(key) != value:
                # A tokenizer for another vocabulary or pattern would silently change val_bpb.
                raise GitarError(f"tokenizer in {directory} was trained for another tokenizer.{key} than "
                                 "ground.json has: run `python prepare.py` to retrain it")
        refusal = _bytes_rule_refusal(directory, manifest)
        if refusal is not None:
            raise refusal
        return cls(_build_encoding(ranks, manifest["split_pattern"], manifest["special_tokens"]), manifest["bos_token"])

    def get_vocab_size(self) -> int:
        return int(self.enc.n_vocab)

    def get_bos_token_id(self) -> int:
        return int(self.bos_token_id)

    def encode(self, text: str | list[str], prepend: int | str | None = None,
               num_threads: int = 8) -> list[int] | list[list[int]]:
        """Token ids of a text, or of each text in a list (tokenized in parallel), without
        special tokens; `prepend` (an id or a special token's name) goes in front of each."""
        if isinstance(text, str):
            return self._prefix(prepend) + self.enc.encode_ordinary(text)
        if isinstance(text, list):
            return self.encode_batch(text, prepend, num_threads)
        raise TypeError(f"Tokenizer.encode: expected str or list[str], got {type(text).__name__}")

    def encode_batch(self, texts: list[str], prepend: int | str | None = None, num_threads: int = 8) -> list[list[int]]:
        first = self._prefix(prepend)
        return [first + ids for ids in self.enc.encode_ordinary_batch(texts, num_threads=num_threads)]

    def encode_arrays(self, texts: list[str], bos: int, num_threads: int = 8) -> list[npt.NDArray[np.int64]]:
        """encode(texts, prepend=bos) as int64 arrays, read from tiktoken's own buffers: the
        dataloader's path, where no token becomes a Python int (cheaper, and the GIL is held
        for a few calls per batch instead of once per token)."""
        encode = functools.partial(self.enc.encode_to_numpy, allowed_special=set(), disallowed_special=())
        with ThreadPoolExecutor(max_workers=num_threads) as pool:  # the Rust encoder releases the GIL
            return with_bos(list(pool.map(encode, texts)), bos)

    def _prefix(self, prepend: int | str | None) -> list[int]:
        if prepend is None:
            return []
        return [prepend if isinstance(prepend, int) else self.enc.encode_single_token(prepend)]

    def decode(self, ids: list[int]) -> str:
        return str(self.enc.decode(ids))


def get_token_bytes(device: str | torch.device = "cpu") -> torch.Tensor:
    """int32 [vocab]: bytes per token id by TOKEN_BYTES_RULE, 0 for special tokens (excluded from bpb)."""
    path = TOKENIZER_DIR / TOKEN_BYTES_FILE
    try:
        manifest = json.loads((TOKENIZER_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _not_prepared(TOKENIZER_DIR) from None
    if not path.is_file() or not isinstance(manifest, dict):
        raise _not_prepared(TOKENIZER_DIR)
    refusal = _bytes_rule_refusal(TOKENIZER_DIR, manifest)
    if refusal is not None:
        raise refusal
    token_bytes: torch.Tensor = torch.load(path, map_location=device, weights_only=True)
    return token_bytes


# ---------------------------------------------------------------------------
# Runtime: dataloader (imported by train.py)
# ---------------------------------------------------------------------------

TOKENIZER_BATCH = 128  # documents per tokenizer call: enough to keep its threads busy
# Packed batches kept ready ahead of the training step: enough to absorb a slow shard read,
# few enough that memory stays small (one batch of 128 x 2049 tokens is 4 MB).
PREFETCH_BATCHES = 3


def _split_paths(split: str) -> list[Path]:
    if split not in ("train", "val"):
        raise GitarError(f'make_dataloader: split must be "train" or "val", got {split!r}')
    paths = [DATA_DIR / name for name in (TRAIN_SHARDS if split == "train" else (VAL_SHARD,))]
    if not all(p.is_file() for p in paths):
        raise _not_prepared(DATA_DIR)
    return paths


def _document_batches(tokenizer: Tokenizer, paths: Sequence[Path]) -> Iterator[DocBatch]:
    """Tokenized documents (BOS first, as int64 arrays), forever, with the 1-based epoch.

    Upstream's batches exactly: each row group of each shard in order, cut into batches of
    TOKENIZER_BATCH documents (the last batch of a row group may be shorter). The packer tops
    its buffer up a whole batch at a time, so the batch boundaries decide which documents
    share a row: other boundaries would give other rows, the validation set included.
    """
    bos = tokenizer.get_bos_token_id()
    epoch = 1
    while True:
        read = 0
        for path in paths:
            for group in _row_groups(path):
                for start in range(0, len(group), TOKENIZER_BATCH):
                    texts = [t for t in group[start : start + TOKENIZER_BATCH] if isinstance(t, str)]
                    if texts:
                        read += len(texts)
                        yield tokenizer.encode_arrays(texts, bos), epoch
        if not read:
            raise GitarError(f"no documents in {', '.join(p.name for p in paths)}: rerun `python prepare.py`")
        epoch += 1


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, device: str | torch.device | None = None,
                    buffer_size: int = 1000) -> Generator[tuple[torch.Tensor, torch.Tensor, int], None, None]:
    """(inputs [B, T], targets [B, T], epoch) batches of int64 tokens, forever.

    Rows are packed best-fit from a buffer of `buffer_size` documents (gitar/runtime/packing.py):
    each row starts with BOS, holds T + 1 tokens without padding, and targets are the
    inputs shifted by one. Packing runs in a background thread a few batches ahead.
    """
    paths = _split_paths(split)
    target = torch.device(device if device is not None else PLATFORM.device)
    pin = target.type == "cuda"  # pinned host memory makes the copy asynchronous; CUDA only

    def batches() -> Iterator[tuple[torch.Tensor, int]]:
        packer = BestFitPacker(_document_batches(tokenizer, paths), row_capacity=T + 1, buffer_size=buffer_size)
        while True:
            rows = torch.from_numpy(packer.next_rows(B))
            pair = torch.empty((2, B, T), dtype=torch.long, pin_memory=pin)
            pair[0].copy_(rows[:, :-1])
            pair[1].copy_(rows[:, 1:])
            yield pair, packer.epoch

    return _deliver(batches, target)


def _deliver(batches: Callable[[], Iterator[tuple[torch.Tensor, int]]],
             device: torch.device) -> Generator[tuple[torch.Tensor, torch.Tensor, int], None, None]:
    # The thread starts on the first next() and stops when this generator is closed or collected.
    with Prefetcher(batches, depth=PREFETCH_BATCHES, name="gitar-dataloader") as ready:
        for pair, epoch in ready:
            if device.type != "cpu":
                pair = pair.to(device, non_blocking=device.type == "cuda")
            yield pair[0], pair[1], epoch


# ---------------------------------------------------------------------------
# Evaluation: the fixed metric (do not change)
# ---------------------------------------------------------------------------

# Rows of logits turned into float32 log-probabilities at a time: 4 x 2048 x 8192 floats is
# 268 MB, small next to the model's own logits, whatever the evaluation batch size.
EVAL_CHUNK_ROWS = 4


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor,
                   chunk_rows: int = EVAL_CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (nats, float64) over target tokens that are text (byte length > 0),
    and the summed byte length of those targets (int64)."""
    nats = torch.zeros((), dtype=torch.float64, device=logits.device)
    nbytes = torch.zeros((), dtype=torch.int64, device=logits.device)
    for start in range(0, logits.size(0), chunk_rows):
        chunk = logits[start : start + chunk_rows].float()
        y = targets[start : start + chunk_rows].reshape(-1)
        loss = F.cross_entropy(chunk.reshape(-1, chunk.size(-1)), y, reduction="none")
        token_len = token_bytes[y]
        # where(), not boolean indexing: no device-to-host sync on CUDA
        nats += torch.where(token_len > 0, loss, 0.0).sum(dtype=torch.float64)
        nbytes += token_len.sum(dtype=torch.int64)
    return nats, nbytes


def _model_device(model: torch.nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device(PLATFORM.device)


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int) -> float:
    """Bits per byte on the pinned validation shard: independent of the vocabulary size.

    Uses the model's logits, not its loss: model(x) must return [B, T, vocab] logits. Sums
    the cross-entropy over target tokens that are text and divides by ln 2 x their bytes
    (TOKEN_BYTES_RULE: upstream's by default). Always MAX_SEQ_LEN rows and the first EVAL_TOKENS tokens of the shard (at least
    one batch), so every experiment is measured on the same text.
    """
    device = _model_device(model)
    token_bytes = get_token_bytes(device)
    if token_bytes.numel() != tokenizer.get_vocab_size():
        raise GitarError(f"{TOKENIZER_DIR / TOKEN_BYTES_FILE} does not match the tokenizer: rerun `python prepare.py`")
    steps = max(1, EVAL_TOKENS // (batch_size * MAX_SEQ_LEN))
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val", device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for _ in range(steps):
            x, y, _ = next(loader)
            logits = model(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape \
                    or logits.size(-1) < token_bytes.numel():
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise GitarError(f"evaluate_bpb: model(x) must return logits of shape [B, T, vocab] "
                                 f"= [{batch_size}, {MAX_SEQ_LEN}, {token_bytes.numel()}], got {shape}")
            nats, nbytes = nats_and_bytes(logits, y, token_bytes)
            total_nats += nats
            total_bytes += nbytes
    finally:
        loader.close()  # stops the prefetch thread now rather than at garbage collection
    return float(total_nats.item() / (math.log(2) * total_bytes.item()))


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for gitar experiments (see ground.json)")
    parser.add_argument("--source", metavar="DIR", type=Path,
                        help="build the shards from local .parquet/.txt/.md files instead of downloading")
    args = parser.parse_args(argv)
    try:
        print(f"cache: {CACHE_DIR}")
        _refuse_upstream_tokenizer()  # before anything is written
        remove_stale_temps(DATA_DIR, TOKENIZER_DIR)  # a killed run's (one prepare.py per cache at a time)
        if args.source is not None:
            prepare_source(args.source.expanduser())
        else:
            download_data()
        train_tokenizer()
    except GitarError as e:
        print(e.message, file=sys.stderr)
        return int(e.code)
    platform = PLATFORM
    if platform.device == "cuda" and GROUND.processor.attention in ("auto", "fa3"):
        # Upstream fetches FA3 at every start; the trainer here has no network, so fetch it now.
        print(fetch_flash_attention_3(platform.capability, FA3_DIR))
        platform = detect_platform(GROUND.processor, probe_device(FA3_DIR))
    print(f"ready: {platform.describe()}")
    for warning in platform.warnings:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
