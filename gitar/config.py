"""ground.json (user-owned) and model.json (agent-owned): load, validate all of it, type it.

Loading either file checks every key: a missing file, invalid JSON (line and column),
a duplicate, missing or unknown key (a typo must not be silently ignored), a wrong type,
a value out of range, or values inconsistent with each other. Each problem is one
GitarError line naming the file and the dotted key, so `python train.py` and gitar
print the same message and nothing runs on a half-understood configuration.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gitar.errors import GitarError

GROUND_FILE = "ground.json"
MODEL_FILE = "model.json"

MODES = ("train", "test", "cpu")
DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_BACKENDS = ("auto", "fa3", "sdpa")
KEEP_RULES = ("strict", "margin", "confirm")  # see gitar/judge.py for each rule
# Where the recorded val_bpb comes from (gitar/integrity.py): gitar's own evaluation of the model
# train.py exports, or the number train.py prints (for trainers that cannot export a torch model;
# `gitar verify` flags every record measured that way).
EVALUATE_SOURCES = ("harness", "reported")

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Typed model of the two files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    cache_dir: str  # where shards and the tokenizer live; relative paths resolve against the workspace
    base_url: str  # parquet shards shard_NNNNN.parquet with a text column
    num_train_shards: int
    val_shard: int  # the pinned validation shard's index
    text_column: str
    download_retries: int


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int
    split_pattern: str
    special_tokens: tuple[str, ...]
    bos_token: str


@dataclass(frozen=True)
class TrainingConfig:
    mode: str  # selects the time budget: train (300 s), test (60 s) or the tiny cpu preset
    max_seq_len: int
    time_budget_s: Mapping[str, float]
    eval_tokens: int

    @property
    def budget_s(self) -> float:
        return self.time_budget_s[self.mode]


@dataclass(frozen=True)
class ProcessorConfig:
    device: str
    dtype: str
    attention: str
    compile: bool | None  # None means auto
    peak_flops: float | None  # None means auto (from SM count and clock)


@dataclass(frozen=True)
class ExperimentConfig:
    command: tuple[str, ...]  # "{python}" is replaced by the interpreter running gitar
    timeout_s: float  # hard wall-clock limit on the whole training process
    branch_prefix: str
    agent_owned: tuple[str, ...]
    user_owned: tuple[str, ...]  # a trailing "/" means the whole directory
    keep_rule: str
    margin_k: float  # margin and confirm: an improvement must exceed margin_k noise standard deviations
    confirm_runs: int  # confirm: the most extra runs of a candidate that beats the best by less than the margin
    noise_floor: float  # the val_bpb standard deviation assumed until measured, and the least ever used
    smoke: bool  # run the CPU smoke step at pre-commit
    evaluate: str = "harness"  # optional in ground.json: one of EVALUATE_SOURCES


@dataclass(frozen=True)
class Ground:
    path: Path
    data: DataConfig
    tokenizer: TokenizerConfig
    training: TrainingConfig
    processor: ProcessorConfig
    experiment: ExperimentConfig

    @property
    def cache_dir(self) -> Path:
        """The data cache, absolute. Relative paths resolve against the workspace root.

        gitar runs experiments from a snapshot of the commit, so it exports
        GITAR_WORKSPACE; without it the workspace is the directory of ground.json.
        """
        p = Path(os.path.expanduser(self.data.cache_dir))
        if p.is_absolute():
            return p
        base = os.environ.get("GITAR_WORKSPACE") or str(self.path.parent)
        return (Path(base) / p).resolve()


@dataclass(frozen=True)
class ArchitectureConfig:
    depth: int
    aspect_ratio: int  # model_dim = depth * aspect_ratio, rounded up to a multiple of head_dim
    head_dim: int
    window_pattern: str  # per-layer S (half context) / L (full context), repeated; last layer is L


@dataclass(frozen=True)
class OptimizationConfig:
    total_batch_size: int  # tokens per optimizer step
    device_batch_size: int  # sequences per micro-batch
    embedding_lr: float
    unembedding_lr: float
    matrix_lr: float
    scalar_lr: float
    weight_decay: float
    adam_betas: tuple[float, float]
    warmup_ratio: float
    warmdown_ratio: float
    final_lr_frac: float


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    architecture: ArchitectureConfig
    optimization: OptimizationConfig
    evaluation: EvaluationConfig


# ---------------------------------------------------------------------------
# Reading JSON with one-line errors
# ---------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GitarError(f"{name}: file not found at {path}; create it (see README) or run from the workspace") from None
    except IsADirectoryError:
        raise GitarError(f"{name}: {path} is a directory, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise GitarError(f"{name}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSON") from None
    except OSError as e:
        raise GitarError(f"{name}: cannot read {path}: {e.strerror}") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise GitarError(f'{name}: key "{k}" appears twice in one object; keep one')
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise GitarError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    shown = json.dumps(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({kind})"


class _Section:
    """One JSON object being read: remembers which keys were used, to reject the rest."""

    def __init__(self, file: str, prefix: str, obj: Any) -> None:
        if not isinstance(obj, dict):
            where = prefix or "the top level"
            raise GitarError(f"{file}: {where}: expected an object, got {_describe(obj)}")
        self.file, self.prefix, self.obj = file, prefix, obj
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def fail(self, k: str, msg: str) -> GitarError:
        return GitarError(f"{self.file}: {self.key(k)}: {msg}")

    def raw(self, k: str) -> Any:
        if k not in self.obj:
            near = difflib.get_close_matches(k, [x for x in self.obj if isinstance(x, str)], n=1)
            if near:
                raise GitarError(f'{self.file}: {self.key(near[0])}: unknown key; did you mean "{k}"?')
            raise GitarError(f"{self.file}: missing key {self.key(k)}; add it (see the shipped {self.file})")
        self.used.add(k)
        return self.obj[k]

    def section(self, k: str) -> _Section:
        return _Section(self.file, self.key(k), self.raw(k))

    def get(self, k: str, check: Callable[[_Section, str, Any], T]) -> T:
        return check(self, k, self.raw(k))

    def optional(self, k: str, check: Callable[[_Section, str, Any], T], default: T) -> T:
        # For keys added after workspaces were made: their ground.json is pinned, so it may lack them.
        return self.get(k, check) if k in self.obj else default

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.used)
        if unknown:
            k = unknown[0]
            near = difflib.get_close_matches(k, sorted(self.used), n=1)
            hint = f'; did you mean "{near[0]}"?' if near else "; remove it"
            raise self.fail(k, f"unknown key{hint}")


# Checkers: each takes (section, key, value) and returns the typed value or raises one line.


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[_Section, str, Any], int]:
    def check(s: _Section, k: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise s.fail(k, f"expected an integer, got {_describe(v)}")
        if lo is not None and v < lo:
            raise s.fail(k, f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise s.fail(k, f"must be at most {hi}, got {v}")
        return v

    return check


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[_Section, str, Any], float]:
    def check(s: _Section, k: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise s.fail(k, f"expected a finite number, got {_describe(v)}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise s.fail(k, f"must be {'greater than' if lo_open else 'at least'} {lo}, got {v}")
        if hi is not None and v > hi:
            raise s.fail(k, f"must be at most {hi}, got {v}")
        return float(v)

    return check


def _str(nonempty: bool = True) -> Callable[[_Section, str, Any], str]:
    def check(s: _Section, k: str, v: Any) -> str:
        if not isinstance(v, str):
            raise s.fail(k, f"expected a string, got {_describe(v)}")
        if nonempty and not v.strip():
            raise s.fail(k, "must not be empty")
        return v

    return check


def _choice(options: tuple[str, ...]) -> Callable[[_Section, str, Any], str]:
    def check(s: _Section, k: str, v: Any) -> str:
        if v not in options:
            raise s.fail(k, f"must be one of {', '.join(options)}; got {_describe(v)}")
        return str(v)

    return check


def _bool(s: _Section, k: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise s.fail(k, f"expected true or false, got {_describe(v)}")
    return v


def _str_list(nonempty: bool = True) -> Callable[[_Section, str, Any], tuple[str, ...]]:
    def check(s: _Section, k: str, v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise s.fail(k, f"expected a list of non-empty strings, got {_describe(v)}")
        if nonempty and not v:
            raise s.fail(k, "must not be empty")
        if len(set(v)) != len(v):
            raise s.fail(k, "lists an entry twice")
        return tuple(v)

    return check


def _auto_or(inner: Callable[[_Section, str, Any], T]) -> Callable[[_Section, str, Any], T | None]:
    def check(s: _Section, k: str, v: Any) -> T | None:
        return None if v == "auto" else inner(s, k, v)

    return check


def _regex(s: _Section, k: str, v: Any) -> str:
    pattern = _str()(s, k, v)
    try:
        # The tokenizer uses a Rust regex with \p classes and possessive quantifiers that
        # Python's re only partly knows; check what Python can, i.e. balanced syntax.
        re.compile(pattern.replace(r"\p{L}", "a").replace(r"\p{N}", "0").replace("++", "+").replace("?+", "?"))
    except re.error as e:
        raise s.fail(k, f"not a valid regular expression: {e}") from None
    return pattern


# ---------------------------------------------------------------------------
# ground.json
# ---------------------------------------------------------------------------


def parse_ground(obj: Any, path: Path) -> Ground:
    f = path.name
    top = _Section(f, "", obj)

    d = top.section("data")
    data = DataConfig(
        cache_dir=d.get("cache_dir", _str()),
        base_url=d.get("base_url", _str()),
        num_train_shards=d.get("num_train_shards", _int(1)),
        val_shard=d.get("val_shard", _int(0)),
        text_column=d.get("text_column", _str()),
        download_retries=d.get("download_retries", _int(1, 100)),
    )
    d.done()
    if data.num_train_shards > data.val_shard:
        raise d.fail("num_train_shards", f"must not exceed data.val_shard ({data.val_shard}): "
                     "training shards are numbered below the pinned validation shard")

    t = top.section("tokenizer")
    tok = TokenizerConfig(
        vocab_size=t.get("vocab_size", _int(256 + 1, 1 << 20)),
        split_pattern=t.get("split_pattern", _regex),
        special_tokens=t.get("special_tokens", _str_list()),
        bos_token=t.get("bos_token", _str()),
    )
    t.done()
    if tok.bos_token not in tok.special_tokens:
        raise t.fail("bos_token", f'"{tok.bos_token}" is not one of tokenizer.special_tokens')
    if tok.vocab_size <= 256 + len(tok.special_tokens):
        raise t.fail("vocab_size", f"must exceed 256 byte tokens + {len(tok.special_tokens)} special tokens")

    tr = top.section("training")
    budgets = tr.section("time_budget_s")
    time_budget = {m: budgets.get(m, _num(0, lo_open=True)) for m in MODES}
    budgets.done()
    training = TrainingConfig(
        mode=tr.get("mode", _choice(MODES)),
        max_seq_len=tr.get("max_seq_len", _int(8, 1 << 20)),
        time_budget_s=time_budget,
        eval_tokens=tr.get("eval_tokens", _int(1)),
    )
    tr.done()
    if training.eval_tokens < training.max_seq_len:
        raise tr.fail("eval_tokens", f"must be at least training.max_seq_len ({training.max_seq_len})")

    p = top.section("processor")
    processor = ProcessorConfig(
        device=p.get("device", _choice(DEVICES)),
        dtype=p.get("dtype", _choice(DTYPES)),
        attention=p.get("attention", _choice(ATTENTION_BACKENDS)),
        compile=p.get("compile", _auto_or(_bool)),
        peak_flops=p.get("peak_flops", _auto_or(_num(0, lo_open=True))),
    )
    p.done()

    e = top.section("experiment")
    experiment = ExperimentConfig(
        command=e.get("command", _str_list()),
        timeout_s=e.get("timeout_s", _num(0, lo_open=True)),
        branch_prefix=e.get("branch_prefix", _str()),
        agent_owned=e.get("agent_owned", _str_list()),
        user_owned=e.get("user_owned", _str_list()),
        keep_rule=e.get("keep_rule", _choice(KEEP_RULES)),
        margin_k=e.get("margin_k", _num(0, 10, lo_open=True)),
        confirm_runs=e.get("confirm_runs", _int(1, 20)),
        noise_floor=e.get("noise_floor", _num(0, 1)),
        smoke=e.get("smoke", _bool),
        evaluate=e.optional("evaluate", _choice(EVALUATE_SOURCES), "harness"),
    )
    e.done()
    both = set(experiment.agent_owned) & set(experiment.user_owned)
    if both:
        raise e.fail("agent_owned", f"{sorted(both)[0]} is listed as both agent-owned and user-owned")
    if experiment.timeout_s <= training.budget_s:
        raise e.fail("timeout_s", f"must exceed the {training.mode} time budget ({training.budget_s:g} s) "
                     "to leave room for start-up and evaluation")
    if not experiment.branch_prefix.endswith("/"):
        raise e.fail("branch_prefix", f'must end with "/", got {_describe(experiment.branch_prefix)}')

    top.done()
    return Ground(path=path, data=data, tokenizer=tok, training=training,
                  processor=processor, experiment=experiment)


def load_ground(path: str | os.PathLike[str] = GROUND_FILE) -> Ground:
    p = Path(path).absolute()
    return parse_ground(_read_json(p), p)


# ---------------------------------------------------------------------------
# model.json
# ---------------------------------------------------------------------------


def _betas(s: _Section, k: str, v: Any) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise s.fail(k, f"expected a list of two numbers [beta1, beta2], got {_describe(v)}")
    b1 = _num(0, 1)(s, k, v[0])
    b2 = _num(0, 1)(s, k, v[1])
    if b1 >= 1 or b2 >= 1:
        raise s.fail(k, f"each beta must be below 1, got {v}")
    return (b1, b2)


def parse_model(obj: Any, path: Path, ground: Ground | None = None) -> ModelConfig:
    f = path.name
    top = _Section(f, "", obj)

    a = top.section("architecture")
    arch = ArchitectureConfig(
        depth=a.get("depth", _int(1, 1024)),
        aspect_ratio=a.get("aspect_ratio", _int(1, 1 << 16)),
        head_dim=a.get("head_dim", _int(8, 1024)),
        window_pattern=a.get("window_pattern", _str()),
    )
    a.done()
    if not re.fullmatch(r"[SLsl]+", arch.window_pattern):
        raise a.fail("window_pattern", f"use only S (short) and L (long), got {_describe(arch.window_pattern)}")
    if arch.head_dim % 2:
        raise a.fail("head_dim", f"must be even (rotary embeddings rotate pairs), got {arch.head_dim}")

    o = top.section("optimization")
    lr = _num(0)
    opt = OptimizationConfig(
        total_batch_size=o.get("total_batch_size", _int(1)),
        device_batch_size=o.get("device_batch_size", _int(1)),
        embedding_lr=o.get("embedding_lr", lr),
        unembedding_lr=o.get("unembedding_lr", lr),
        matrix_lr=o.get("matrix_lr", lr),
        scalar_lr=o.get("scalar_lr", lr),
        weight_decay=o.get("weight_decay", _num(0)),
        adam_betas=o.get("adam_betas", _betas),
        warmup_ratio=o.get("warmup_ratio", _num(0, 1)),
        warmdown_ratio=o.get("warmdown_ratio", _num(0, 1)),
        final_lr_frac=o.get("final_lr_frac", _num(0, 1)),
    )
    o.done()
    if opt.warmup_ratio + opt.warmdown_ratio > 1:
        raise o.fail("warmdown_ratio", f"warmup_ratio + warmdown_ratio must be at most 1, "
                     f"got {opt.warmup_ratio:g} + {opt.warmdown_ratio:g}")

    ev = top.section("evaluation")
    evaluation = EvaluationConfig(batch_size=ev.get("batch_size", _int(1)))
    ev.done()
    top.done()

    if ground is not None:
        t = ground.training.max_seq_len
        per_micro = opt.device_batch_size * t
        if opt.total_batch_size % per_micro:
            raise o.fail("total_batch_size", f"{opt.total_batch_size} is not a multiple of device_batch_size × "
                         f"max_seq_len = {opt.device_batch_size} × {t} = {per_micro}")
        if ground.training.eval_tokens < evaluation.batch_size * t:
            raise ev.fail("batch_size", f"{evaluation.batch_size} × max_seq_len {t} exceeds "
                          f"ground.json training.eval_tokens ({ground.training.eval_tokens})")
    return ModelConfig(path=path, architecture=arch, optimization=opt, evaluation=evaluation)


def load_model(path: str | os.PathLike[str] = MODEL_FILE, ground: Ground | None = None) -> ModelConfig:
    p = Path(path).absolute()
    return parse_model(_read_json(p), p, ground)


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw JSON object of a config file, with the same one-line errors (for presets)."""
    obj = _read_json(Path(path).absolute())
    if not isinstance(obj, dict):
        raise GitarError(f"{Path(path).name}: expected a JSON object at the top level")
    return obj
