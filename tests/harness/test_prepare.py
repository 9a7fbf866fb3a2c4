"""prepare.py: downloads, --source, the tokenizer, the dataloader and evaluate_bpb, on real files."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gitar.demo import corpus
from gitar.errors import GitarError
from gitar.runtime import download, ingest
from gitar.runtime.download import download_shard
from gitar.runtime.platform import detect_platform, probe_device
from testing.hermetic import env_without_gitar
from testing.packing import reference_rows
from testing.prepared import import_prepare, run_prepare

UNICODE_TEXTS = [
    "Hello world! Numbers: 1234567.",
    "naïve café, Ærøskøbing, Straße",
    "你好，世界。日本語のテキスト",
    "emoji 🙂🚀 and a rare CJK ext-B character 𠜎",
    "tabs\tand\nnewlines\r\n  indented\n\n\nparagraphs",
    "<|reserved_0|> is plain text here",
    "",
]


def shard_texts(path: Path) -> list[str]:
    return pq.read_table(path).column("text").to_pylist()


def parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def flat_paragraphs(count: int, min_chars: int, max_chars: int) -> list[str]:
    """Real text paragraphs (stdlib docstrings, whitespace collapsed) of min..max characters."""
    out, current = [], ""
    for doc in corpus.iter_documents():
        current = f"{current} {' '.join(doc.split())}".strip()
        if len(current) >= min_chars:
            out.append(current[:max_chars].strip())
            current = ""
            if len(out) == count:
                return out
    raise AssertionError("corpus too small")


# ---------------------------------------------------------------------------
# The prepared workspace: tokenizer and token bytes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(prepare_module: ModuleType) -> Any:
    return prepare_module.Tokenizer.from_directory()


def test_constants_come_from_ground_json(prepare_module: ModuleType, prepared_workspace: Path) -> None:
    ground = json.loads((prepared_workspace / "ground.json").read_text())
    assert prepare_module.MAX_SEQ_LEN == ground["training"]["max_seq_len"] == 256
    assert ground["training"]["time_budget_s"]["cpu"] == prepare_module.TIME_BUDGET
    assert ground["training"]["eval_tokens"] == prepare_module.EVAL_TOKENS
    assert detect_platform(prepare_module.GROUND.processor, probe_device()) == prepare_module.PLATFORM


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_tokenizer_round_trips_unicode(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_vocabulary_and_bos(tokenizer: Any, prepared_workspace: Path) -> None:
    ground = json.loads((prepared_workspace / "ground.json").read_text())
    specials = ground["tokenizer"]["special_tokens"]
    assert tokenizer.get_vocab_size() == ground["tokenizer"]["vocab_size"] == 2048
    # Special tokens follow the learned ones; BOS is the first of them.
    assert tokenizer.get_bos_token_id() == 2048 - len(specials)
    assert tokenizer.get_bos_token_id() not in tokenizer.encode("<|reserved_0|>")  # text stays text


def test_encode_batches_and_prepends(tokenizer: Any) -> None:
    bos = tokenizer.get_bos_token_id()
    texts = UNICODE_TEXTS[:4]
    batch = tokenizer.encode(texts, prepend=bos, num_threads=2)
    assert batch == [[bos, *tokenizer.encode(t)] for t in texts]
    assert tokenizer.encode(texts, prepend="<|reserved_0|>") == batch
    assert tokenizer.encode("hi", prepend=bos)[0] == bos
    with pytest.raises(TypeError):
        tokenizer.encode(("a", "tuple"))


def test_encode_arrays_equals_encode(tokenizer: Any) -> None:
    # The dataloader's path (tiktoken's buffers, no Python ints) must give the same ids.
    bos = tokenizer.get_bos_token_id()
    arrays = tokenizer.encode_arrays(UNICODE_TEXTS, bos, num_threads=2)
    assert [a.tolist() for a in arrays] == tokenizer.encode(UNICODE_TEXTS, prepend=bos)
    assert all(str(a.dtype) == "int64" for a in arrays)


def test_tokenizer_is_saved_as_text_not_pickle(prepared_workspace: Path, prepare_module: ModuleType) -> None:
    lines = (prepare_module.TOKENIZER_DIR / "ranks.tiktoken").read_text(encoding="ascii").splitlines()
    assert len(lines) == 2048 - 4
    assert [line.split()[1] for line in lines[:3]] == ["0", "1", "2"]
    manifest = json.loads((prepare_module.TOKENIZER_DIR / "manifest.json").read_text())
    assert manifest["vocab_size"] == 2048 and [s[0] for s in manifest["train_shards"]] == [
        "shard_00000.parquet", "shard_00001.parquet"]


def test_token_bytes_table(prepare_module: ModuleType, tokenizer: Any) -> None:
    token_bytes = prepare_module.get_token_bytes()
    assert token_bytes.dtype == torch.int32 and token_bytes.device.type == "cpu"
    assert token_bytes.shape == (tokenizer.get_vocab_size(),)
    specials = range(tokenizer.get_bos_token_id(), tokenizer.get_vocab_size())
    assert all(token_bytes[i] == 0 for i in specials)
    assert (token_bytes[: tokenizer.get_bos_token_id()] >= 1).all()
    # The 256 single-byte tokens come first: ASCII counts 1, a lone byte of a multi-byte
    # character decodes to U+FFFD and counts its 3 bytes (upstream's rule, the default).
    assert (token_bytes[:128] == 1).all() and (token_bytes[128:256] == 3).all()


def upstream_token_bytes(enc: Any, special_tokens: list[str]) -> list[int]:
    """Upstream autoresearch's table, rebuilt as its prepare.py builds it: decode each id to a
    string on its own; 0 for a special token's string, else the UTF-8 length of the string."""
    specials = set(special_tokens)
    out = []
    for token_id in range(enc.n_vocab):
        text = enc.decode([token_id])
        out.append(0 if text in specials else len(text.encode("utf-8")))
    return out


def test_token_bytes_are_upstreams_by_default(prepare_module: ModuleType, tokenizer: Any) -> None:
    assert prepare_module.TOKEN_BYTES_RULE == "utf8-decoded"
    expected = upstream_token_bytes(tokenizer.enc, list(prepare_module.GROUND.tokenizer.special_tokens))
    table = prepare_module.get_token_bytes().tolist()
    assert table == expected
    # The rule matters: tokens that hold part of a character count 3 bytes, not what they hold.
    raw = [len(tokenizer.enc.decode_single_token_bytes(i)) for i in range(tokenizer.get_bos_token_id())]
    assert sum(a != b for a, b in zip(table, raw, strict=False)) >= 128


def test_token_bytes_rule_changes_rewrite_the_table_only(workspace_factory: Callable[..., Path],
                                                         small_corpus_dir: Path) -> None:
    """tokenizer.token_bytes "raw": a text's tokens add up to its UTF-8 length. Switching the rule
    refuses the old table with one line; `prepare.py` rewrites the table, not the merges."""
    ws = workspace_factory()
    prepare = import_prepare(ws)
    assert prepare.main(["--source", str(small_corpus_dir)]) == 0
    ranks = prepare.TOKENIZER_DIR / "ranks.tiktoken"
    trained = ranks.stat().st_mtime_ns
    ground = json.loads((ws / "ground.json").read_text())
    ground["tokenizer"]["token_bytes"] = "raw"
    (ws / "ground.json").write_text(json.dumps(ground))
    literal = import_prepare(ws)
    with pytest.raises(GitarError, match=r"token_bytes.pt counts token bytes by the rule 'utf8-decoded', ground.json "
                                         r"tokenizer.token_bytes asks for 'raw': run `python prepare.py`"):
        literal.Tokenizer.from_directory()
    with pytest.raises(GitarError, match="asks for 'raw'"):
        literal.get_token_bytes()
    assert literal.main(["--source", str(small_corpus_dir)]) == 0
    assert ranks.stat().st_mtime_ns == trained  # not retrained
    tokenizer = literal.Tokenizer.from_directory()
    token_bytes = literal.get_token_bytes()
    assert json.loads((literal.TOKENIZER_DIR / "manifest.json").read_text())["token_bytes"] == "raw"
    for text in UNICODE_TEXTS:  # exact even where a token holds part of a multi-byte character
        ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8")), text


def test_a_table_from_before_the_rule_is_refused(prepared_workspace: Path, tmp_path: Path) -> None:
    # gitar's earlier prepare.py counted raw bytes and wrote no rule into the manifest.
    ws = tmp_path / "ws"
    shutil.copytree(prepared_workspace, ws, ignore=shutil.ignore_patterns("__pycache__"))
    ground = json.loads((ws / "ground.json").read_text())
    cache = Path(ground["data"]["cache_dir"])
    shutil.copytree(cache / "tokenizer", tmp_path / "cache" / "tokenizer")
    ground["data"]["cache_dir"] = str(tmp_path / "cache")
    (ws / "ground.json").write_text(json.dumps(ground))
    manifest_path = tmp_path / "cache" / "tokenizer" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["token_bytes"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GitarError, match=r"by the rule 'raw', ground.json tokenizer.token_bytes asks for 'utf8-decoded'"):
        import_prepare(ws).Tokenizer.from_directory()


# ---------------------------------------------------------------------------
# The dataloader
# ---------------------------------------------------------------------------


def test_dataloader_batches(prepare_module: ModuleType, tokenizer: Any) -> None:
    loader = prepare_module.make_dataloader(tokenizer, 4, 64, "train", device="cpu")
    bos = tokenizer.get_bos_token_id()
    for _ in range(5):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 64)
        assert x.dtype == y.dtype == torch.int64
        assert x.device.type == "cpu" and x.is_contiguous() and y.is_contiguous()
        assert (x[:, 0] == bos).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.max()) < tokenizer.get_vocab_size() and int(x.min()) >= 0
        assert epoch == 1
    loader.close()


def upstream_document_batches(tokenizer: Any, paths: list[Path]) -> Iterator[tuple[list[list[int]], int]]:
    """Upstream autoresearch's reading order, rebuilt: every shard in order, every row group of
    it in order, each row group's texts in batches of 128, each document with BOS in front."""
    bos = tokenizer.get_bos_token_id()
    epoch = 1
    while True:
        for path in paths:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                texts = parquet.read_row_group(group).column("text").to_pylist()
                for start in range(0, len(texts), 128):
                    yield [[bos, *tokenizer.encode(t)] for t in texts[start : start + 128]], epoch
        epoch += 1


def assert_loader_rows(loader: Any, expected: list[list[int]], epochs: list[int], B: int, batches: int) -> None:
    for i in range(batches):
        x, y, epoch = next(loader)
        rows = expected[i * B : (i + 1) * B]
        assert x.tolist() == [r[:-1] for r in rows], f"batch {i}"
        assert y.tolist() == [r[1:] for r in rows], f"batch {i}"
        assert epoch == epochs[(i + 1) * B - 1]
    loader.close()


def test_dataloader_rows_equal_the_reference_packing(prepare_module: ModuleType, tokenizer: Any) -> None:
    """The loader's rows, rebuilt independently: upstream's reading order, the plain reference packing."""
    B, T, buffer_size = 8, 128, 300
    paths = [prepare_module.DATA_DIR / name for name in prepare_module.TRAIN_SHARDS]
    expected, epochs = reference_rows(upstream_document_batches(tokenizer, paths), T + 1, buffer_size, 6 * B)
    loader = prepare_module.make_dataloader(tokenizer, B, T, "train", device="cpu", buffer_size=buffer_size)
    assert_loader_rows(loader, expected, epochs, B, 6)


@pytest.fixture(scope="module")
def row_group_workspace(prepared_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The prepared workspace's tokenizer over shards of many uneven row groups (climbmix's
    shards have several): 2 training shards and the validation shard, each written with its
    own row-group size, none a multiple of the 128-document tokenizer batch."""
    root = tmp_path_factory.mktemp("row-groups")
    ws = root / "ws"
    shutil.copytree(prepared_workspace, ws, ignore=shutil.ignore_patterns("__pycache__"))
    ground = json.loads((ws / "ground.json").read_text())
    old_cache = Path(ground["data"]["cache_dir"])
    shutil.copytree(old_cache / "tokenizer", root / "cache" / "tokenizer")
    ground["data"]["cache_dir"] = str(root / "cache")
    (ws / "ground.json").write_text(json.dumps(ground))
    (root / "cache" / "data").mkdir()
    names = [f"shard_{i:05d}.parquet" for i in range(ground["data"]["num_train_shards"])]
    names.append(f"shard_{ground['data']['val_shard']:05d}.parquet")
    for name, row_group_size in zip(names, (50, 77, 45), strict=False):
        texts = shard_texts(old_cache / "data" / name)
        pq.write_table(pa.table({"text": texts}), root / "cache" / "data" / name, row_group_size=row_group_size)
        assert pq.ParquetFile(root / "cache" / "data" / name).num_row_groups >= 3
    return import_prepare(ws)


@pytest.mark.parametrize("split", ["val", "train"])
def test_rows_follow_row_groups_as_upstream_reads_them(row_group_workspace: ModuleType, split: str) -> None:
    """Shards of several row groups: upstream's rows exactly, the validation set included. (pyarrow's
    iter_batches runs batches across row-group boundaries: the buffer, and so the rows, differ.)"""
    prepare = row_group_workspace
    tokenizer = prepare.Tokenizer.from_directory()
    B, T, buffer_size = 4, 256, 200
    names = prepare.TRAIN_SHARDS if split == "train" else (prepare.VAL_SHARD,)
    paths = [prepare.DATA_DIR / name for name in names]
    expected, epochs = reference_rows(upstream_document_batches(tokenizer, paths), T + 1, buffer_size, 12 * B)

    def across_row_groups() -> Iterator[tuple[list[list[int]], int]]:
        bos = tokenizer.get_bos_token_id()
        for epoch in range(1, 100):
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=128, columns=["text"]):
                    yield [[bos, *tokenizer.encode(t)] for t in batch.column(0).to_pylist()], epoch

    assert reference_rows(across_row_groups(), T + 1, buffer_size, 12 * B)[0] != expected  # the layout matters
    loader = prepare.make_dataloader(tokenizer, B, T, split, device="cpu", buffer_size=buffer_size)
    assert_loader_rows(loader, expected, epochs, B, 12)


def test_evaluation_reads_upstreams_validation_rows(row_group_workspace: ModuleType) -> None:
    """evaluate_bpb scores exactly the rows upstream's loader yields from a multi-row-group shard."""
    prepare = row_group_workspace
    tokenizer = prepare.Tokenizer.from_directory()
    batch_size = 4
    steps = max(1, prepare.EVAL_TOKENS // (batch_size * prepare.MAX_SEQ_LEN))
    expected, _ = reference_rows(upstream_document_batches(tokenizer, [prepare.DATA_DIR / prepare.VAL_SHARD]),
                                 prepare.MAX_SEQ_LEN + 1, 1000, steps * batch_size)
    model = BigramModel(tokenizer.get_vocab_size())
    logp = torch.log_softmax(model.table.detach().double(), dim=-1)
    token_bytes = prepare.get_token_bytes()
    rows = torch.tensor(expected)
    x, y = rows[:, :-1], rows[:, 1:]
    counted = token_bytes[y] > 0
    by_hand = -float(logp[x, y][counted].sum()) / (math.log(2) * int(token_bytes[y].sum()))
    assert prepare.evaluate_bpb(model, tokenizer, batch_size) == pytest.approx(by_hand, rel=1e-7)


def test_small_validation_split_cycles_through_epochs(prepare_module: ModuleType, tokenizer: Any) -> None:
    # ~250 held-out documents cannot fill a 1000-document buffer in one pass.
    loader = prepare_module.make_dataloader(tokenizer, 2, 32, "val", device="cpu")
    _, _, epoch = next(loader)
    assert epoch > 1
    loader.close()


def test_closing_the_loader_stops_its_thread(prepare_module: ModuleType, tokenizer: Any) -> None:
    loader = prepare_module.make_dataloader(tokenizer, 2, 32, "train", device="cpu")
    next(loader)
    assert any(t.name == "gitar-dataloader" for t in threading.enumerate())
    loader.close()
    assert not any(t.name == "gitar-dataloader" for t in threading.enumerate())


def test_exiting_with_open_loaders_exits_cleanly(prepared_workspace: Path) -> None:
    """train.py-style scripts leave their loaders open; the process must still exit 0 (before the
    atexit hook, about half such exits aborted in native code: "terminate called", status 134)."""
    script = prepared_workspace / "open_loaders.py"
    script.write_text(
        "import prepare\n"
        "tok = prepare.Tokenizer.from_directory()\n"
        "train = prepare.make_dataloader(tok, 16, 256, 'train', device='cpu'); next(train)\n"
        "val = prepare.make_dataloader(tok, 8, 256, 'val', device='cpu'); next(val)\n"
        "print('done')\n")
    runs = [subprocess.Popen([sys.executable, script.name], cwd=prepared_workspace, env=env_without_gitar(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert (run.returncode, out, "terminate" in err) == (0, "done\n", False), err
    script.unlink()


def test_unknown_split_is_refused(prepare_module: ModuleType, tokenizer: Any) -> None:
    with pytest.raises(GitarError, match='split must be "train" or "val"'):
        prepare_module.make_dataloader(tokenizer, 2, 32, "test")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dataloader_delivers_to_the_gpu(prepare_module: ModuleType, tokenizer: Any) -> None:
    loader = prepare_module.make_dataloader(tokenizer, 4, 64, "train", device="cuda")
    x, y, _ = next(loader)
    cpu_x, cpu_y, _ = next(prepare_module.make_dataloader(tokenizer, 4, 64, "train", device="cpu"))
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), cpu_x) and torch.equal(y.cpu(), cpu_y)
    loader.close()


# ---------------------------------------------------------------------------
# evaluate_bpb
# ---------------------------------------------------------------------------


class UniformModel(torch.nn.Module):
    """Every token equally likely: the loss is ln(vocab) per token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, -1)


class BigramModel(torch.nn.Module):
    """Logits depend on the current token only: easy to compute by hand."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=generator) * 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def val_batches(prepare_module: ModuleType, tokenizer: Any, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    steps = max(1, prepare_module.EVAL_TOKENS // (batch_size * prepare_module.MAX_SEQ_LEN))
    loader = prepare_module.make_dataloader(tokenizer, batch_size, prepare_module.MAX_SEQ_LEN, "val", device="cpu")
    batches = [next(loader)[:2] for _ in range(steps)]
    loader.close()
    return batches


@pytest.mark.parametrize("batch_size", [16, 300])  # 300 x 256 > EVAL_TOKENS: still one batch
def test_uniform_model_by_hand(prepare_module: ModuleType, tokenizer: Any, batch_size: int) -> None:
    vocab = tokenizer.get_vocab_size()
    token_bytes = prepare_module.get_token_bytes().tolist()
    text_targets = total_bytes = 0
    for _, y in val_batches(prepare_module, tokenizer, batch_size):
        for target in y.flatten().tolist():
            text_targets += token_bytes[target] > 0
            total_bytes += token_bytes[target]
    expected = text_targets * math.log(vocab) / (math.log(2) * total_bytes)
    assert prepare_module.evaluate_bpb(UniformModel(vocab), tokenizer, batch_size) == pytest.approx(expected, rel=1e-6)


def test_bigram_model_by_hand(prepare_module: ModuleType, tokenizer: Any) -> None:
    model = BigramModel(tokenizer.get_vocab_size())
    logp = torch.log_softmax(model.table.detach().double(), dim=-1)
    token_bytes = prepare_module.get_token_bytes()
    nats, total_bytes = 0.0, 0
    for x, y in val_batches(prepare_module, tokenizer, 16):
        counted = token_bytes[y] > 0
        nats -= float(logp[x, y][counted].sum())
        total_bytes += int(token_bytes[y].sum())
    expected = nats / (math.log(2) * total_bytes)
    got = prepare_module.evaluate_bpb(model, tokenizer, 16)
    assert got == pytest.approx(expected, rel=1e-6)
    assert prepare_module.evaluate_bpb(model, tokenizer, 16) == got  # deterministic, to the last bit


def test_chunking_does_not_change_the_result(prepare_module: ModuleType, tokenizer: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = BigramModel(tokenizer.get_vocab_size(), seed=1)
    results = []
    for rows in (1, 3, 16):
        monkeypatch.setattr(prepare_module, "EVAL_CHUNK_ROWS", rows)
        results.append(prepare_module.evaluate_bpb(model, tokenizer, 16))
    assert results[0] == pytest.approx(results[1], rel=1e-12) and results[0] == pytest.approx(results[2], rel=1e-12)


def test_nats_and_bytes_ignores_special_targets(prepare_module: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    token_bytes = torch.tensor([0, 1, 2, 3, 4, 0], dtype=torch.int32)  # ids 0 and 5 are special
    logits = torch.randn(5, 7, 6, generator=generator)
    targets = torch.randint(0, 6, (5, 7), generator=generator)
    targets[0, 0], targets[2, 3], targets[4, 6] = 0, 5, 0
    special = token_bytes[targets] == 0
    nats, nbytes = prepare_module.nats_and_bytes(logits, targets, token_bytes, chunk_rows=2)
    by_hand = -torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0][~special].sum()
    assert float(nats) == pytest.approx(float(by_hand), rel=1e-6)
    assert int(nbytes) == int(token_bytes[targets].sum())
    # Whatever the model predicts at special targets does not count.
    logits[special] = torch.randn(int(special.sum()), 6, generator=generator) * 50
    assert float(prepare_module.nats_and_bytes(logits, targets, token_bytes, chunk_rows=5)[0]) == pytest.approx(
        float(nats), rel=1e-6)


def test_model_returning_something_else_is_refused(prepare_module: ModuleType, tokenizer: Any) -> None:
    class LossModel(torch.nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(())

    with pytest.raises(GitarError, match=r"model\(x\) must return logits of shape \[B, T, vocab\]"):
        prepare_module.evaluate_bpb(LossModel(), tokenizer, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_the_gpu_matches_the_cpu(prepare_module: ModuleType, tokenizer: Any) -> None:
    model = BigramModel(tokenizer.get_vocab_size())
    on_cpu = prepare_module.evaluate_bpb(model, tokenizer, 16)
    assert prepare_module.evaluate_bpb(model.cuda(), tokenizer, 16) == pytest.approx(on_cpu, rel=1e-5)


# ---------------------------------------------------------------------------
# --source DIR
# ---------------------------------------------------------------------------


def test_source_text_files_become_shards(workspace_factory: Callable[..., Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # Paragraphs of 2001..3999 characters: no two fit in one 4000-character document, so
    # every paragraph is one document and the expected documents are known.
    paragraphs = flat_paragraphs(60, 2001, 3999)
    source = tmp_path / "src"
    (source / "b").mkdir(parents=True)
    (source / ".hidden").mkdir()
    (source / "a.txt").write_text("\n\n".join(paragraphs[:25]) + "\n", encoding="utf-8")
    (source / "b" / "notes.md").write_text("\r\n\r\n".join(paragraphs[25:]), encoding="utf-8")
    (source / ".hidden" / "skip.txt").write_text("hidden files are not sources", encoding="utf-8")
    (source / "skip.json").write_text("{}", encoding="utf-8")
    prepare = import_prepare(workspace_factory())
    assert prepare.main(["--source", str(source)]) == 0

    data = prepare.DATA_DIR
    assert sorted(p.name for p in data.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    train = shard_texts(data / "shard_00000.parquet") + shard_texts(data / "shard_00001.parquet")
    assert abs(len(shard_texts(data / "shard_00000.parquet")) - len(shard_texts(data / "shard_00001.parquet"))) <= 1
    assert train == [p for i, p in enumerate(paragraphs) if i % 10 != 9]
    assert shard_texts(data / "shard_06542.parquet") == paragraphs[9::10]
    assert "60 documents" in capsys.readouterr().out
    assert prepare.Tokenizer.from_directory().decode(prepare.Tokenizer.from_directory().encode("ok")) == "ok"


def test_text_files_split_on_blank_lines_and_group_paragraphs(tmp_path: Path) -> None:
    short = flat_paragraphs(12, 900, 999)  # four fit in 4000 characters with their separators
    path = tmp_path / "book.txt"
    path.write_text("\n \n".join(short[:6]) + "\n\n\n\t\n" + "\n\n".join(short[6:]), encoding="utf-8")
    docs = ingest.text_documents(path)
    assert docs == ["\n\n".join(short[i : i + 4]) for i in (0, 4, 8)]
    long = flat_paragraphs(1, 6000, 6000)[0]
    path.write_text(f"{short[0]}\n\n{long}\n\n{short[1]}", encoding="utf-8")
    assert ingest.text_documents(path) == [short[0], long, short[1]]  # a long paragraph stays whole


def test_source_parquet_files_become_shards(workspace_factory: Callable[..., Path], tmp_path: Path) -> None:
    docs = corpus.collect_documents(40)
    source = tmp_path / "src"
    source.mkdir()
    # Read in name order; nulls and blank texts are dropped; other columns are ignored.
    (source / "part-1.parquet").write_bytes(parquet_bytes({"text": [*docs[20:], None], "id": list(range(21))}))
    (source / "part-0.parquet").write_bytes(parquet_bytes({"text": [*docs[:10], "   ", *docs[10:20]],
                                                           "id": list(range(21))}))
    prepare = import_prepare(workspace_factory())
    assert prepare.main(["--source", str(source)]) == 0
    data = prepare.DATA_DIR
    train = shard_texts(data / "shard_00000.parquet") + shard_texts(data / "shard_00001.parquet")
    assert train == [d for i, d in enumerate(docs) if i % 10 != 9]
    assert shard_texts(data / "shard_06542.parquet") == docs[9::10]


def test_source_is_idempotent_and_notices_changes(workspace_factory: Callable[..., Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    docs = corpus.collect_documents(300)
    (source / "a.parquet").write_bytes(parquet_bytes({"text": docs[:200]}))
    prepare = import_prepare(workspace_factory())
    assert prepare.main(["--source", str(source)]) == 0
    files = [*sorted(prepare.DATA_DIR.iterdir()), prepare.TOKENIZER_DIR / "manifest.json",
             prepare.TOKENIZER_DIR / "ranks.tiktoken"]
    stamps = [p.stat().st_mtime_ns for p in files]
    capsys.readouterr()

    assert prepare.main(["--source", str(source)]) == 0
    out = capsys.readouterr().out
    assert "0 shards written, 3 unchanged" in out and "already trained" in out
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert len(shard_texts(prepare.DATA_DIR / "shard_06542.parquet")) == 20  # not duplicated

    (source / "b.parquet").write_bytes(parquet_bytes({"text": docs[200:]}))
    assert prepare.main(["--source", str(source)]) == 0
    out = capsys.readouterr().out
    assert "3 shards written" in out and "tokenizer: trained" in out
    assert len(shard_texts(prepare.DATA_DIR / "shard_06542.parquet")) == 30


def test_changed_tokenizer_config_is_refused_until_prepared_again(workspace_factory: Callable[..., Path],
                                                            small_corpus_dir: Path) -> None:
    ws = workspace_factory()
    prepare = import_prepare(ws)
    assert prepare.main(["--source", str(small_corpus_dir)]) == 0
    ground = json.loads((ws / "ground.json").read_text())
    ground["tokenizer"]["vocab_size"] = 1024
    (ws / "ground.json").write_text(json.dumps(ground))
    changed = import_prepare(ws)
    with pytest.raises(GitarError, match=r"another tokenizer.vocab_size than ground.json has: run `python prepare.py`"):
        changed.Tokenizer.from_directory()
    assert changed.main(["--source", str(small_corpus_dir)]) == 0
    assert changed.Tokenizer.from_directory().get_vocab_size() == 1024
    assert changed.get_token_bytes().shape == (1024,)


@pytest.mark.parametrize(("files", "words"), [
    (None, "is not a directory"),
    ({}, "no .parquet, .txt, .md files under"),
    ({"x.parquet": parquet_bytes({"body": ["a"] * 30})}, "x.parquet has no column 'text' (has body)"),
    ({"x.parquet": b"PAR1 but not really"}, "cannot read"),
    ({"few.txt": b"one\n\ntwo\n\nthree"}, "too few documents (1)"),  # short paragraphs make one document
    ({"latin1.txt": "caf\xe9".encode("latin-1")}, "is not UTF-8 text (byte 3)"),
])
def test_bad_sources_stop_with_one_line(workspace_factory: Callable[..., Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], files: dict[str, bytes] | None,
                                        words: str) -> None:
    source = tmp_path / "src"
    if files is not None:
        source.mkdir()
        for name, content in files.items():
            (source / name).write_bytes(content)
    prepare = import_prepare(workspace_factory())
    assert prepare.main(["--source", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
    assert not prepare.DATA_DIR.exists() or not any(prepare.DATA_DIR.iterdir())


def test_source_must_not_contain_the_cache(workspace_factory: Callable[..., Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace_factory()
    prepare = import_prepare(ws)
    assert prepare.main(["--source", str(prepare.CACHE_DIR.parent)]) == 2
    assert "contains the cache" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Not prepared, bad configuration
# ---------------------------------------------------------------------------


def test_unprepared_cache_says_what_to_run(workspace_factory: Callable[..., Path]) -> None:
    prepare = import_prepare(workspace_factory())
    hint = r"data not prepared in .*: run `python prepare.py` \(or `--source DIR` offline\)"
    with pytest.raises(GitarError, match=hint):
        prepare.Tokenizer.from_directory()
    with pytest.raises(GitarError, match=hint):
        prepare.get_token_bytes()
    with pytest.raises(GitarError, match=hint):
        prepare.make_dataloader(object(), 2, 16, "train")


def test_bad_ground_json_stops_script_and_importer_with_one_line(workspace_factory: Callable[..., Path]) -> None:
    ws = workspace_factory(training={"mode": "fast"})
    result = run_prepare(ws)
    assert result.returncode == 2
    assert result.stderr.strip() == "ground.json: training.mode: must be one of train, test, cpu; got \"fast\" (a string)"
    (ws / "trainer.py").write_text("import prepare\nprint('not reached')\n")
    imported = subprocess.run([sys.executable, "trainer.py"], cwd=ws, env=env_without_gitar(), capture_output=True, text=True)
    assert imported.returncode == 2 and imported.stdout == ""
    assert imported.stderr == result.stderr


def test_corrupt_shard_error_reaches_the_consumer(workspace_factory: Callable[..., Path], small_corpus_dir: Path) -> None:
    prepare = import_prepare(workspace_factory())
    assert prepare.main(["--source", str(small_corpus_dir)]) == 0
    (prepare.DATA_DIR / "shard_06542.parquet").write_bytes(b"not parquet at all")
    loader = prepare.make_dataloader(prepare.Tokenizer.from_directory(), 2, 16, "val", device="cpu")
    with pytest.raises(pa.ArrowInvalid):
        next(loader)
    loader.close()


# ---------------------------------------------------------------------------
# Downloads, against a local HTTP server that misbehaves on request
# ---------------------------------------------------------------------------


class ShardServer:
    """Serves `files` on 127.0.0.1; `faults[name]` lists what the next requests for name get:
    "500", "404", "truncate" (full Content-Length, half the body, then hang up) or "html"
    (a 200 answer that is not parquet, as captive portals send)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests[name] += 1
                queued = server.faults.get(name, [])
                fault = queued.pop(0) if queued else None
                body = server.files.get(name)
                if fault in ("500", "404") or body is None:
                    self.send_error(int(fault or 404))
                    return
                if fault == "html":
                    body = b"<html>please log in</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if fault == "truncate" else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/shards"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ShardServer]:
    s = ShardServer()
    yield s
    s.stop()


@pytest.fixture
def shard_body() -> bytes:
    return parquet_bytes({"text": corpus.collect_documents(200)})


def test_download_retries_until_the_shard_arrives_whole(server: ShardServer,
                                                        shard_body: bytes, tmp_path: Path) -> None:
    server.files["shard_00000.parquet"] = shard_body
    server.faults["shard_00000.parquet"] = ["500", "truncate", "html"]
    dest = tmp_path / "data" / "shard_00000.parquet"
    download_shard(f"{server.url}/shard_00000.parquet", dest, "text", attempts=4, backoff_s=0)
    assert dest.read_bytes() == shard_body
    assert server.requests["shard_00000.parquet"] == 4
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temp file left


@pytest.mark.parametrize("fault", ["truncate", "html", "500"])
def test_failed_download_never_leaves_a_shard(server: ShardServer, shard_body: bytes,
                                              tmp_path: Path, fault: str) -> None:
    server.files["shard_00000.parquet"] = shard_body
    server.faults["shard_00000.parquet"] = [fault] * 3
    dest = tmp_path / "data" / "shard_00000.parquet"
    with pytest.raises(GitarError, match=r"failed after 3 attempts .*--source DIR"):
        download_shard(f"{server.url}/shard_00000.parquet", dest, "text", attempts=3, backoff_s=0)
    assert server.requests["shard_00000.parquet"] == 3
    assert list(dest.parent.iterdir()) == []


def test_missing_file_is_not_retried(server: ShardServer, tmp_path: Path) -> None:
    with pytest.raises(GitarError, match=r"HTTP Error 404.*check data\.base_url"):
        download_shard(f"{server.url}/shard_00009.parquet", tmp_path / "s.parquet", "text", 5, 0)
    assert server.requests["shard_00009.parquet"] == 1


def test_wrong_column_is_not_retried(server: ShardServer, tmp_path: Path) -> None:
    server.files["shard_00000.parquet"] = parquet_bytes({"content": ["a", "b"]})
    with pytest.raises(GitarError, match=r"no column 'text' .*data\.text_column"):
        download_shard(f"{server.url}/shard_00000.parquet", tmp_path / "s.parquet", "text", 5, 0)
    assert server.requests["shard_00000.parquet"] == 1
    assert list(tmp_path.iterdir()) == []


def test_prepare_downloads_every_shard_once(workspace_factory: Callable[..., Path], server: ShardServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus.collect_documents(900)
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    for i, name in enumerate(names):
        server.files[name] = parquet_bytes({"text": docs[i * 300 : (i + 1) * 300]})
    server.faults["shard_00001.parquet"] = ["truncate"]
    server.files["shard_00002.parquet"] = server.files["shard_00000.parquet"]  # beyond num_train_shards
    prepare = import_prepare(workspace_factory(data={"base_url": server.url + "/", "download_retries": 2}))
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    assert prepare.main([]) == 0
    assert sorted(p.name for p in prepare.DATA_DIR.iterdir()) == names
    assert all((prepare.DATA_DIR / n).read_bytes() == server.files[n] for n in names)
    assert dict(server.requests) == {"shard_00000.parquet": 1, "shard_00001.parquet": 2, "shard_06542.parquet": 1}
    assert prepare.Tokenizer.from_directory().get_vocab_size() == 2048

    assert prepare.main([]) == 0  # everything present: nothing fetched again
    assert sum(server.requests.values()) == 4


def test_prepare_reports_a_failed_download(workspace_factory: Callable[..., Path], server: ShardServer,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prepare = import_prepare(workspace_factory(data={"base_url": server.url, "download_retries": 2}))
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    assert prepare.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "check data.base_url" in err[-1]
    assert not prepare.DATA_DIR.exists() or list(prepare.DATA_DIR.iterdir()) == []
