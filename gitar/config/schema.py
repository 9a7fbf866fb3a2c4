"""ground.json (user-owned): load, validate all of it, type it; and model.json read as a JSON object.

model.json is the agent's: its schema is train.py's (the agent adds a hyperparameter to both), so
gitar reads it only as one JSON object. Loading ground.json checks every key: a missing file,
invalid JSON (line and column), a duplicate, missing or unknown key (a typo must not be silently
ignored), a wrong type, a value out of range, or values inconsistent with each other. Each problem
is one GitarError line naming the file and the dotted key, so `python train.py` and gitar print
the same message and nothing runs on a half-understood configuration.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gitar import shared
from gitar.config.jsonfile import (
    Section,
    auto_or,
    boolean,
    choice,
    describe,
    integer,
    number,
    parse_json,
    read_json,
    regex,
    str_list,
    string,
)
from gitar.errors import GitarError


class Commits(Protocol):
    """What ground_at needs of a repository (gitar/store/git.py's Git has it): config sits below git."""

    @property
    def root(self) -> Path: ...

    def blob_at(self, sha: str, path: str) -> bytes | None: ...

GROUND_FILE = "ground.json"
MODEL_FILE = "model.json"

MODES = ("train", "test", "cpu")
DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# fa3: FlashAttention 3 (a source build, or the `kernels` hub build: `pip install -e '.[fa3]'`);
# flex: PyTorch's FlexAttention with sliding-window block masks (compiled, any CUDA GPU with
# Triton); sdpa: scaled_dot_product_attention with a dense [T, T] mask (CPU and MPS).
ATTENTION_BACKENDS = ("auto", "fa3", "flex", "sdpa")
# tokenizer.token_bytes: how many bytes each token counts for in val_bpb. "utf8-decoded" is
# upstream autoresearch's rule (the UTF-8 length of the token decoded to text, so a token holding
# part of a character counts the 3 bytes of U+FFFD): the same data and model give upstream's
# number. "raw" counts the bytes the token holds, so a text's tokens add up to its UTF-8 length.
TOKEN_BYTES_RULES = ("utf8-decoded", "raw")
DEFAULT_TOKEN_BYTES_RULE = "utf8-decoded"
KEEP_RULES = ("strict", "margin", "confirm")  # see gitar/loop/judge.py for each rule
# Where the recorded val_bpb comes from (gitar/loop/integrity.py): gitar's own evaluation of the model
# train.py exports, or the number train.py prints (for trainers that cannot export a torch model;
# `gitar verify` flags every record measured that way).
EVALUATE_SOURCES = ("harness", "reported")
SANDBOXES = ("bwrap", "off")  # experiment.sandbox: gitar/host/sandbox.py; "off" runs train.py unconfined
# experiment.repeats: what happens to an attempt whose agent-owned files equal an earlier attempt's
# (gitar/loop/repeats.py): "run" runs it and flags it, "refuse" refuses it in the preflight (exit 2).
REPEATS_RUN, REPEATS_REFUSE = "run", "refuse"
REPEAT_POLICIES = (REPEATS_RUN, REPEATS_REFUSE)
# training.allowance_s when ground.json has none: seconds a trainer may run past its budget for
# start-up, compilation and the export. gitar times the trainer itself; a run past budget +
# allowance is rejected, so at most this much more training can hide in it (README).
DEFAULT_ALLOWANCE_S = {"train": 120.0, "test": 60.0, "cpu": 120.0}
DEFAULT_PROCESSES = 16384  # tasks: threads count too, and torch starts one per core in several pools
DEFAULT_LOG_MB = 64
DEFAULT_FILE_MB = 65536  # the export of a large model is gigabytes; this stops a disk-filling file
AUTO_MEMORY_FRACTION = 0.9  # memory_mb "auto": of the machine's memory, leaving some to the system

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
    token_bytes: str = DEFAULT_TOKEN_BYTES_RULE  # one of TOKEN_BYTES_RULES


@dataclass(frozen=True)
class TrainingConfig:
    mode: str  # selects the time budget: train (300 s), test (60 s) or the tiny cpu preset
    max_seq_len: int
    time_budget_s: Mapping[str, float]
    eval_tokens: int
    allowance: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ALLOWANCE_S))

    @property
    def budget_s(self) -> float:
        return self.time_budget_s[self.mode]

    @property
    def allowance_s(self) -> float:
        """How long past its budget a trainer may run (start-up, compilation, export)."""
        return self.allowance[self.mode]


@dataclass(frozen=True)
class ProcessorConfig:
    device: str
    dtype: str
    attention: str
    compile: bool | None  # None means auto
    peak_flops: float | None  # None means auto (from SM count and clock)


@dataclass(frozen=True)
class LimitsConfig:
    """experiment.limits: what one run may use (gitar/host/limits.py enforces them)."""

    memory_mb: int | None = None  # None: "auto", a share of the machine's memory
    processes: int = DEFAULT_PROCESSES
    log_mb: int = DEFAULT_LOG_MB
    file_mb: int = DEFAULT_FILE_MB


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
    sandbox: str = "bwrap"  # optional in ground.json: one of SANDBOXES
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Public keys ("ed25519:<base64>") of the runners whose signed records are trusted (gitar/store/signing.py);
    # optional in ground.json, default none.
    runner_keys: tuple[str, ...] = ()
    repeats: str = REPEATS_RUN  # optional in ground.json: one of REPEAT_POLICIES

    def is_experiment_branch(self, branch: str | None) -> bool:
        """The one test of whether gitar's loop runs on a branch (hooks, commands, the runner)."""
        return branch is not None and branch.startswith(self.branch_prefix)


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
        base = os.environ.get(shared.WORKSPACE) or str(self.path.parent)
        return (Path(base) / p).resolve()


# ---------------------------------------------------------------------------
# ground.json
# ---------------------------------------------------------------------------


def parse_ground(obj: Any, path: Path) -> Ground:
    f = path.name
    top = Section(f, "", obj)

    d = top.section("data")
    data = DataConfig(
        cache_dir=d.get("cache_dir", string()),
        base_url=d.get("base_url", string()),
        num_train_shards=d.get("num_train_shards", integer(1)),
        val_shard=d.get("val_shard", integer(0)),
        text_column=d.get("text_column", string()),
        download_retries=d.get("download_retries", integer(1, 100)),
    )
    d.done()
    if data.num_train_shards > data.val_shard:
        raise d.fail("num_train_shards", f"must not exceed data.val_shard ({data.val_shard}): "
                     "training shards are numbered below the pinned validation shard")

    t = top.section("tokenizer")
    tok = TokenizerConfig(
        vocab_size=t.get("vocab_size", integer(256 + 1, 1 << 20)),
        split_pattern=t.get("split_pattern", regex),
        special_tokens=t.get("special_tokens", str_list()),
        bos_token=t.get("bos_token", string()),
        token_bytes=t.optional("token_bytes", choice(TOKEN_BYTES_RULES), DEFAULT_TOKEN_BYTES_RULE),
    )
    t.done()
    if tok.bos_token not in tok.special_tokens:
        raise t.fail("bos_token", f'"{tok.bos_token}" is not one of tokenizer.special_tokens')
    if tok.vocab_size <= 256 + len(tok.special_tokens):
        raise t.fail("vocab_size", f"must exceed 256 byte tokens + {len(tok.special_tokens)} special tokens")

    tr = top.section("training")
    budgets = tr.section("time_budget_s")
    time_budget = {m: budgets.get(m, number(0, lo_open=True)) for m in MODES}
    budgets.done()
    training = TrainingConfig(
        mode=tr.get("mode", choice(MODES)),
        max_seq_len=tr.get("max_seq_len", integer(8, 1 << 20)),
        time_budget_s=time_budget,
        eval_tokens=tr.get("eval_tokens", integer(1)),
        allowance=_allowance(tr),
    )
    tr.done()
    if training.eval_tokens < training.max_seq_len:
        raise tr.fail("eval_tokens", f"must be at least training.max_seq_len ({training.max_seq_len})")

    p = top.section("processor")
    processor = ProcessorConfig(
        device=p.get("device", choice(DEVICES)),
        dtype=p.get("dtype", choice(DTYPES)),
        attention=p.get("attention", choice(ATTENTION_BACKENDS)),
        compile=p.get("compile", auto_or(boolean)),
        peak_flops=p.get("peak_flops", auto_or(number(0, lo_open=True))),
    )
    p.done()

    e = top.section("experiment")
    experiment = ExperimentConfig(
        command=e.get("command", str_list()),
        timeout_s=e.get("timeout_s", number(0, lo_open=True)),
        branch_prefix=e.get("branch_prefix", string()),
        agent_owned=e.get("agent_owned", str_list()),
        user_owned=e.get("user_owned", str_list()),
        keep_rule=e.get("keep_rule", choice(KEEP_RULES)),
        margin_k=e.get("margin_k", number(0, 10, lo_open=True)),
        confirm_runs=e.get("confirm_runs", integer(1, 20)),
        noise_floor=e.get("noise_floor", number(0, 1)),
        smoke=e.get("smoke", boolean),
        evaluate=e.optional("evaluate", choice(EVALUATE_SOURCES), "harness"),
        sandbox=e.optional("sandbox", choice(SANDBOXES), "bwrap"),
        limits=_limits(e),
        runner_keys=e.optional("runner_keys", _runner_keys, ()),
        repeats=e.optional("repeats", choice(REPEAT_POLICIES), REPEATS_RUN),
    )
    e.done()
    both = set(experiment.agent_owned) & set(experiment.user_owned)
    if both:
        raise e.fail("agent_owned", f"{sorted(both)[0]} is listed as both agent-owned and user-owned")
    if experiment.timeout_s <= training.budget_s:
        raise e.fail("timeout_s", f"must exceed the {training.mode} time budget ({training.budget_s:g} s) "
                     "to leave room for start-up and evaluation")
    if not experiment.branch_prefix.endswith("/"):
        raise e.fail("branch_prefix", f'must end with "/", got {describe(experiment.branch_prefix)}')

    top.done()
    return Ground(path=path, data=data, tokenizer=tok, training=training,
                  processor=processor, experiment=experiment)


def _allowance(tr: Section) -> dict[str, float]:
    if "allowance_s" not in tr.obj:
        return dict(DEFAULT_ALLOWANCE_S)
    a = tr.section("allowance_s")
    out = {m: a.get(m, number(0)) for m in MODES}
    a.done()
    return out


def _limits(e: Section) -> LimitsConfig:
    if "limits" not in e.obj:
        return LimitsConfig()
    li = e.section("limits")
    limits = LimitsConfig(
        memory_mb=li.optional("memory_mb", auto_or(integer(64)), None),
        processes=li.optional("processes", integer(16), DEFAULT_PROCESSES),
        log_mb=li.optional("log_mb", integer(1), DEFAULT_LOG_MB),
        file_mb=li.optional("file_mb", integer(1), DEFAULT_FILE_MB),
    )
    li.done()
    return limits
# A runner's public key as ground.json spells it; gitar/store/signing.py signs and checks with it.
PUBLIC_PREFIX = "ed25519:"


def parse_public(text: str) -> bytes:
    """The raw 32 bytes of an `ed25519:<base64>` public key; ValueError if it is not one."""
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f'expected "{PUBLIC_PREFIX}<base64>"')
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX):], validate=True)
    except ValueError:
        raise ValueError("the key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return raw


def _runner_keys(s: Section, k: str, v: Any) -> tuple[str, ...]:
    keys = str_list(nonempty=False)(s, k, v)
    for key in keys:
        try:
            parse_public(key)
        except ValueError as e:
            raise s.fail(k, f"{describe(key)} is not a runner public key: {e} "
                         "(`gitar ci --init-key` on the runner prints its key)") from None
    return keys


def load_ground(path: str | os.PathLike[str] = GROUND_FILE) -> Ground:
    p = Path(path).absolute()
    return parse_ground(read_json(p), p)


# ---------------------------------------------------------------------------
# model.json
# ---------------------------------------------------------------------------


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw JSON object of a config file, with the same one-line errors (for presets)."""
    obj = read_json(Path(path).absolute())
    if not isinstance(obj, dict):
        raise GitarError(f"{Path(path).name}: expected a JSON object at the top level")
    return obj


def owned(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether a repository path falls under an ownership list ("dir/" covers a whole directory)."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in patterns)


def ground_at(git: Commits, sha: str) -> Ground:
    """The ground.json of a commit: the experiment's policy is the one it was committed with."""
    blob = git.blob_at(sha, GROUND_FILE)
    if blob is None:
        raise GitarError(f"{GROUND_FILE}: not in commit {sha[:12]}; an experiment branch must carry "
                         "the workspace files (run gitar init in a clone of the template)")
    return parse_ground(parse_json(blob, f"{GROUND_FILE} in commit {sha[:12]}"), git.root / GROUND_FILE)
