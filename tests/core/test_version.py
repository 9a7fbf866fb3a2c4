"""gitar/version.py: the hash of gitar's code that every record carries changes with any change to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import gitar
from gitar import version


def test_the_code_hash_changes_with_the_evaluator_s_code_and_is_stable_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "gitar"
    shutil.copytree(Path(gitar.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gitar, "__file__", str(copy / "__init__.py"))
    version.code_sha256.cache_clear()
    same = version.code_sha256()
    version.code_sha256.cache_clear()
    assert version.code_sha256() == same  # stable
    evaluator = copy / "loop" / "evaluator.py"
    evaluator.write_text(evaluator.read_text() + "\n# one more line\n")
    version.code_sha256.cache_clear()
    changed = version.code_sha256()
    assert changed != same
    version.code_sha256.cache_clear()


@pytest.mark.parametrize("moved", ["runtime/ingest.py", "runtime/download.py", "files.py", "runtime/devices.py",
                                   "runtime/smoke.py", "runtime/seed.py"])
def test_the_code_hash_covers_what_prepare_py_and_train_py_moved_into_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: str) -> None:
    """The --source split (which documents are validation), the downloads, the seed and the device set-up
    were prepare.py's and train.py's, covered by the harness hash and the commit; now they are gitar's."""
    copy = tmp_path / "gitar"
    shutil.copytree(Path(gitar.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gitar, "__file__", str(copy / "__init__.py"))
    version.code_sha256.cache_clear()
    before = version.code_sha256()
    module = copy / moved
    module.write_text(module.read_text() + "\n# one more line\n")
    version.code_sha256.cache_clear()
    assert version.code_sha256() != before
    version.code_sha256.cache_clear()
