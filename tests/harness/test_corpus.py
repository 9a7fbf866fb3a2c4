"""gitar/demo/corpus.py: the embedded stdlib-docstring corpus."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gitar.demo import corpus


def read_texts(paths: list[Path]) -> list[str]:
    return [t for p in paths for t in pq.read_table(p).column(corpus.TEXT_COLUMN).to_pylist()]


def test_write_corpus_writes_parquet_with_a_text_column(tmp_path: Path) -> None:
    paths = corpus.write_corpus(tmp_path, max_docs=corpus.DOCS_PER_FILE + 10)
    assert [p.name for p in paths] == ["stdlib-docs-000.parquet", "stdlib-docs-001.parquet"]
    assert pq.read_schema(paths[0]).names == [corpus.TEXT_COLUMN]
    texts = read_texts(paths)
    assert len(texts) == corpus.DOCS_PER_FILE + 10
    assert len(set(texts)) == len(texts)  # no duplicates, so held-out text never repeats training text
    assert all(len(t) >= corpus.MIN_DOC_CHARS for t in texts)
    assert all(t == t.strip() and not t.startswith(" ") for t in texts)  # cleaned like inspect.cleandoc


def test_corpus_is_deterministic_and_replaces_older_files(tmp_path: Path) -> None:
    first = read_texts(corpus.write_corpus(tmp_path / "a", max_docs=300))
    assert read_texts(corpus.write_corpus(tmp_path / "b", max_docs=300)) == first
    corpus.write_corpus(tmp_path / "a", max_docs=corpus.DOCS_PER_FILE + 1)
    smaller = corpus.write_corpus(tmp_path / "a", max_docs=50)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in smaller] == ["stdlib-docs-000.parquet"]
    assert read_texts(smaller) == first[:50]


def test_max_docs_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_docs"):
        corpus.write_corpus(tmp_path, max_docs=0)


def test_the_whole_corpus_is_megabytes_of_real_text() -> None:
    docs = corpus.collect_documents()
    size = sum(len(d.encode("utf-8")) for d in docs)
    assert len(docs) > 3000 and size > 1_500_000
    assert any("Return" in d for d in docs)


def test_docstrings_in_source_order_from_nested_definitions(tmp_path: Path) -> None:
    long = "x" * corpus.MIN_DOC_CHARS
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(textwrap.dedent(f'''
        """Module {long}"""
        import sys

        class Widget:
            """Class {long}"""

            def method(self):
                """Method
                    indented {long}"""

        if sys.platform == "win32":
            def on_windows():
                """Windows {long}"""
        else:
            try:
                import fcntl
            except ImportError:
                def fallback():
                    """Fallback {long}"""

        def tiny():
            """Too short."""

        def twin():
            """Class {long}"""
        '''))
    (tmp_path / "a_broken.py").write_text("def (:\n")  # unparsable files are skipped
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_mod.py").write_text(f'"""Test {long}"""\n')  # test suites are skipped
    docs = list(corpus.iter_documents(tmp_path))
    ours = [d for d in docs if d.endswith(long)]
    assert ours == [f"Module {long}", f"Class {long}", f"Method\nindented {long}", f"Windows {long}",
                    f"Fallback {long}"]
