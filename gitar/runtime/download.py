"""Downloading the data shards prepare.py names: in parallel, retried, checked, renamed into place whole.

A shard arrives complete and readable or not at all: it is streamed to a temp file, its length
checked against Content-Length and its parquet footer read, and only then renamed to its name
(gitar/files.py write_durable). A failure that a retry may cure (a timeout, a 5xx, a cut or
garbled answer) is retried with a doubling wait; one that it cannot (a 404, a file without the
text column) stops at once with one line naming what to check in ground.json.
"""

from __future__ import annotations

import http.client
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gitar.errors import GitarError
from gitar.files import write_durable

DOWNLOAD_WORKERS = 8  # parallel shard downloads: a few streams fill a typical link, more gain nothing
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: a stalled connection is retried, not waited on
BACKOFF_S = 1.0  # wait before the 2nd attempt; doubles after each failure (1, 2, 4, 8 s ...)
BACKOFF_MAX_S = 30.0  # so that many retries never sleep for minutes
COPY_CHUNK = 1 << 20  # bytes per read while streaming a shard to disk


def _check_parquet(path: Path, text_column: str) -> None:
    """ValueError (worth a retry) unless path is a readable parquet file; GitarError (not
    worth one) when it is parquet but lacks the text column."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"not a readable parquet file ({e})") from None
    if text_column not in names:
        # The server answered with a real file that lacks the column: retrying cannot help.
        raise GitarError(f"{path.name}: no column {text_column!r} (has {', '.join(names)}); "
                         "check data.text_column in ground.json")


def _fetch(url: str, tmp: Path, text_column: str) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
        expected = response.headers.get("Content-Length")
        shutil.copyfileobj(response, f, COPY_CHUNK)
        received = f.tell()
    if expected is not None and received != int(expected):
        raise ValueError(f"truncated: received {received} of {expected} bytes")
    _check_parquet(tmp, text_column)


def _is_permanent(error: Exception) -> bool:
    """HTTP client errors other than timeout / rate limit will not change on a retry."""
    return isinstance(error, urllib.error.HTTPError) and 400 <= error.code < 500 and error.code not in (408, 429)


def download_shard(url: str, dest: Path, text_column: str, attempts: int, backoff_s: float) -> None:
    """Download url to dest atomically: `attempts` tries in all (data.download_retries), waiting
    backoff_s, 2 x backoff_s, ... between them. Only a complete, readable parquet file with the
    text column is renamed to dest; anything else is deleted."""
    for attempt in range(1, attempts + 1):
        try:
            write_durable(dest, lambda tmp: _fetch(url, tmp, text_column))
            return
        except (OSError, http.client.HTTPException, ValueError) as e:
            if _is_permanent(e):
                raise GitarError(f"download of {url} failed: {e}; check data.base_url in ground.json") from None
            if attempt == attempts:
                raise GitarError(f"download of {url} failed after {attempts} attempts ({e}); check the "
                                 "network, or prepare offline with `python prepare.py --source DIR`") from None
            delay = min(backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)
            print(f"  {dest.name}: attempt {attempt}/{attempts} failed ({e}); retrying in {delay:g}s", file=sys.stderr)
            time.sleep(delay)


def download_shards(base_url: str, names: Sequence[str], data_dir: Path, text_column: str, attempts: int) -> None:
    """Every shard of `names` not already in data_dir, from base_url/NAME, DOWNLOAD_WORKERS at a time."""
    missing = [name for name in names if not (data_dir / name).is_file()]
    print(f"data: {len(names) - len(missing)}/{len(names)} shards already in {data_dir}")
    if not missing:
        return
    base = base_url.rstrip("/")

    def fetch(name: str) -> None:
        download_shard(f"{base}/{name}", data_dir / name, text_column, attempts, BACKOFF_S)
        print(f"  downloaded {name} ({(data_dir / name).stat().st_size / 1e6:.1f} MB)")

    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, len(missing))) as pool:
        futures = [pool.submit(fetch, name) for name in missing]
    for future in futures:
        future.result()  # re-raises the first failure once every download has finished or failed
