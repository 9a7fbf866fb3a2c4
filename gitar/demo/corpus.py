"""The embedded default corpus: real English text that every Python install carries.

A machine without network (a laptop on a train, CI, `gitar demo`) still needs real
text to train the tokenizer and a tiny model on. The standard library ships plenty:
the docstrings of its modules, classes and functions, plus the language-reference
topics that `pydoc` shows (`pydoc_data.topics`). `write_corpus` collects them in a
deterministic order and writes parquet files with a "text" column, the format that
`python prepare.py --source DIR` reads.

Sources are read with `ast` (never imported: importing tkinter or idlelib would have
side effects), docstrings are cleaned like `inspect.cleandoc`, tiny and duplicate ones
are dropped so that held-out documents never repeat training documents verbatim.
"""

from __future__ import annotations

import ast
import itertools
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEXT_COLUMN = "text"
# One-liners such as "Return self." teach a language model little; 80 characters is about
# one full sentence of explanation.
MIN_DOC_CHARS = 80
# Split the corpus over a few files so `--source` exercises reading more than one input.
DOCS_PER_FILE = 2000
FILE_PREFIX = "stdlib-docs-"
# Test suites' docstrings are short and repetitive; site-packages is not the standard library.
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})

_DOCUMENTED = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Definitions nested in these statements (e.g. `if sys.platform == ...: def f(): ...`)
# are still definitions worth reading.
_BLOCKS = (ast.If, ast.Try, ast.With, ast.For, ast.While)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    """Every .py file of the standard library, sorted by relative path for a stable order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so the walk never descends into site-packages (often the largest tree).
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(body: list[ast.stmt]) -> Iterator[str]:
    """Docstrings of the definitions in `body`, depth first in source order."""
    for node in body:
        if isinstance(node, _DOCUMENTED):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
            yield from _docstrings(node.body)
        elif isinstance(node, _BLOCKS):
            for inner in _inner_bodies(node):
                yield from _docstrings(inner)


def _inner_bodies(node: ast.stmt) -> list[list[ast.stmt]]:
    bodies: list[list[ast.stmt]] = [getattr(node, name, []) for name in ("body", "orelse", "finalbody")]
    return bodies + [handler.body for handler in getattr(node, "handlers", [])]


def _file_docstrings(path: Path) -> list[str]:
    # Parse one file at a time and drop its tree: holding every tree alive makes the
    # garbage collector rescan them all and triples the time.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old invalid escape sequences warn on parse
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # a file this interpreter cannot parse is simply not part of the corpus
    module_doc = ast.get_docstring(tree, clean=True)
    return ([module_doc] if module_doc else []) + list(_docstrings(tree.body))


def _pydoc_topics() -> Iterator[str]:
    """The language-reference topics `help()` shows; some minimal installs strip them."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for _, text in sorted(topics.items()):
        yield str(text)


def iter_documents(root: Path | None = None) -> Iterator[str]:
    """All corpus documents in their fixed order: stdlib docstrings, then pydoc topics."""
    docstrings = (doc for path in _source_files(root or stdlib_root()) for doc in _file_docstrings(path))
    seen: set[str] = set()
    for raw in itertools.chain(docstrings, _pydoc_topics()):
        # cleandoc leaves trailing spaces when a docstring has an unindented line in it
        doc = raw.strip()
        if len(doc) >= MIN_DOC_CHARS and doc not in seen:
            seen.add(doc)
            yield doc


def collect_documents(max_docs: int | None = None, root: Path | None = None) -> list[str]:
    """The first `max_docs` documents (all when None); stops parsing once it has enough."""
    return list(itertools.islice(iter_documents(root), max_docs))


def write_corpus(dest_dir: Path, *, max_docs: int | None = None) -> list[Path]:
    """Write the corpus as parquet files with a "text" column under dest_dir; return their paths.

    Earlier corpus files in dest_dir are replaced, so the directory always holds exactly
    one corpus (a smaller max_docs must not leave stale files for `--source` to read).
    """
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max_docs must be at least 1, got {max_docs}")
    docs = collect_documents(max_docs)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for old in dest_dir.glob(f"{FILE_PREFIX}*.parquet"):
        old.unlink()
    paths = []
    for n, start in enumerate(range(0, len(docs), DOCS_PER_FILE)):
        path = dest_dir / f"{FILE_PREFIX}{n:03d}.parquet"
        table = pa.table({TEXT_COLUMN: pa.array(docs[start : start + DOCS_PER_FILE], type=pa.string())})
        pq.write_table(table, path)
        paths.append(path)
    return paths
