"""`python prepare.py --source DIR`: the data shards built from local files instead of downloaded.

Every .parquet (its text column), .txt and .md file under DIR, hidden ones skipped, in sorted path
order; every VAL_EVERY-th document is held out as the pinned validation shard, the rest cut into
the training shards. A shard already holding exactly its documents is left as it is, so a re-run
rewrites nothing and keeps the trained tokenizer. Anything unusable is one line naming the file.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gitar.errors import GitarError
from gitar.files import write_durable

SOURCE_SUFFIXES = (".parquet", ".txt", ".md")
# Every 10th document (the 10th, 20th, ...) is held out for validation: deterministic, spread
# over the whole source, and 10% is plenty for EVAL_TOKENS on small corpora.
VAL_EVERY = 10
# A text file is split on blank lines into paragraphs, and consecutive paragraphs are joined
# into documents of up to 4000 characters (~1000 tokens, half a row). One document per file
# would waste most of a long file: packing crops a document at the row end and drops the
# rest. One per paragraph would lose the context between paragraphs.
TEXT_DOC_CHARS = 4000
_BLANK_LINE = re.compile(r"\n\s*\n")
DIGEST_KEY = b"gitar.sha256"  # the parquet metadata key holding a shard's digest of its documents


def _source_files(source: Path) -> list[Path]:
    files = [p for p in source.rglob("*")
             if p.suffix.lower() in SOURCE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    return sorted(files, key=lambda p: p.relative_to(source).as_posix())


def parquet_documents(path: Path, text_column: str) -> list[str]:
    """The non-blank strings of a parquet file's text column."""
    try:
        names = pq.read_schema(path).names
        if text_column not in names:
            raise GitarError(f"--source: {path} has no column {text_column!r} (has {', '.join(names)}); "
                             "rename it or set data.text_column in ground.json")
        texts = pq.read_table(path, columns=[text_column]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise GitarError(f"--source: cannot read {path} as parquet ({e})") from None
    return [t for t in texts if isinstance(t, str) and t.strip()]


def text_documents(path: Path) -> list[str]:
    """A UTF-8 text file as documents: paragraphs joined up to TEXT_DOC_CHARS (a longer one alone)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GitarError(f"--source: {path} is not UTF-8 text (byte {e.start}); convert it or remove it") from None
    except OSError as e:
        raise GitarError(f"--source: cannot read {path} ({e.strerror})") from None
    docs: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in _BLANK_LINE.split(text)):
        if not paragraph:
            continue
        if current and len(current) + 2 + len(paragraph) > TEXT_DOC_CHARS:
            docs.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    return [*docs, current] if current else docs


def read_source_documents(source: Path, data_dir: Path, val_shard: str, text_column: str) -> list[str]:
    """All documents under source, in sorted path order (hidden files and folders skipped)."""
    if not source.is_dir():
        raise GitarError(f"--source: {source} is not a directory")
    resolved = data_dir.resolve()
    if resolved == source.resolve() or source.resolve() in resolved.parents:
        raise GitarError(f"--source: {source} contains the cache {data_dir}; point it at the raw files instead")
    files = _source_files(source)
    if not files:
        raise GitarError(f"--source: no {', '.join(SOURCE_SUFFIXES)} files under {source}")
    # The pinned validation shard among the sources would put validation documents into the
    # training shards (and make the split overwrite it): an upstream cache's data/ directory, say.
    held = [f for f in files if f.name == val_shard]
    if held:
        raise GitarError(f"--source: {held[0]} is the pinned validation shard ({val_shard}); its documents would "
                         "become training data; point --source at raw files without it")
    docs: list[str] = []
    for path in files:
        docs += parquet_documents(path, text_column) if path.suffix.lower() == ".parquet" else text_documents(path)
    return docs


def split_documents(docs: Sequence[str], num_train_shards: int) -> tuple[list[list[str]], list[str]]:
    """(training shards, validation documents): every VAL_EVERY-th document is held out; the
    rest is cut into num_train_shards contiguous, near-equal shards."""
    val = [d for i, d in enumerate(docs) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [d for i, d in enumerate(docs) if i % VAL_EVERY != VAL_EVERY - 1]
    if not val or len(train) < num_train_shards:
        raise GitarError(f"--source: too few documents ({len(docs)}): one in {VAL_EVERY} is held out for "
                         f"validation and each of the {num_train_shards} training shards (data.num_train_shards) "
                         "needs at least one; add text or lower data.num_train_shards")
    bounds = [len(train) * i // num_train_shards for i in range(num_train_shards + 1)]
    return [train[a:b] for a, b in itertools.pairwise(bounds)], val


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] != ["a", "bc"]
        h.update(data)
    return h.hexdigest()


def write_shard(path: Path, texts: Sequence[str], text_column: str) -> bool:
    """Write texts as a parquet shard unless path already holds exactly them; True if written.

    The shard records a digest of its documents in the parquet metadata, so a re-run
    compares footers instead of rewriting (and so does not invalidate the tokenizer).
    """
    digest = _digest(texts)
    if path.is_file():
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (pa.ArrowException, OSError):
            metadata = {}
        if metadata.get(DIGEST_KEY) == digest.encode():
            return False
    table = pa.table({text_column: pa.array(texts, type=pa.string())}).replace_schema_metadata(
        {DIGEST_KEY.decode(): digest})
    write_durable(path, lambda tmp: pq.write_table(table, tmp))
    return True


def ingest_source(source: Path, data_dir: Path, train_shards: Sequence[str], val_shard: str,
                  text_column: str) -> None:
    """The shards `train_shards` and `val_shard` in data_dir, from the files under source."""
    docs = read_source_documents(source, data_dir, val_shard, text_column)
    train, val = split_documents(docs, len(train_shards))
    written = sum(write_shard(data_dir / name, texts, text_column) for name, texts in zip(train_shards, train, strict=True))
    written += write_shard(data_dir / val_shard, val, text_column)
    print(f"data: {len(docs)} documents from {source}: {len(docs) - len(val)} for training in "
          f"{len(train_shards)} shards, {len(val)} held out in {val_shard}; "
          f"{written} shards written, {len(train_shards) + 1 - written} unchanged, in {data_dir}")
