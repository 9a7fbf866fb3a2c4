"""The tiny CPU preset: the shipped ground.json and model.json scaled down for `gitar demo` and tests.

Only the keys below change; everything else (tokenizer pattern, policy, file ownership)
stays as shipped, so the demo exercises the same harness a GPU run does.
"""

from __future__ import annotations

import ast
import copy
import operator
from pathlib import Path
from typing import Any

import gitar
from gitar import shared
from gitar.errors import ExitCode, GitarError

# ground.json keys that the CPU preset overrides, as (section, key) -> value.
CPU_GROUND: dict[tuple[str, ...], Any] = {
    ("data", "cache_dir"): "data",  # inside the workspace, so a demo is self-contained
    ("data", "num_train_shards"): 2,
    ("tokenizer", "vocab_size"): 2048,  # small embedding and lm_head: most CPU time goes to the blocks
    ("training", "mode"): "cpu",
    ("training", "max_seq_len"): 256,
    ("training", "eval_tokens"): 65536,  # 256 rows of 256 tokens: a stable number in about a second
    ("experiment", "timeout_s"): 180,
}

# The whole model.json of the CPU preset: a 2-layer, 128-wide GPT that learns visibly in 20 s on 2 cores.
CPU_MODEL: dict[str, Any] = {
    "architecture": {"depth": 2, "aspect_ratio": 64, "head_dim": 64, "window_pattern": "SL"},
    "optimization": {
        "total_batch_size": 4096,
        "device_batch_size": 16,
        "embedding_lr": 0.6,
        "unembedding_lr": 0.004,
        "matrix_lr": 0.04,
        "scalar_lr": 0.5,
        "weight_decay": 0.2,
        "adam_betas": [0.8, 0.95],
        "warmup_ratio": 0.0,
        "warmdown_ratio": 0.5,
        "final_lr_frac": 0.0,
    },
    "evaluation": {"batch_size": 16},
}


def cpu_ground(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped ground.json object with the CPU preset applied."""
    return _apply(shipped, CPU_GROUND)


def cpu_model() -> dict[str, Any]:
    return copy.deepcopy(CPU_MODEL)


# ---------------------------------------------------------------------------
# The workspace template, and the preset for an existing karpathy/autoresearch clone
# ---------------------------------------------------------------------------

# The files a workspace is made of, as this project ships them.
TEMPLATE_FILES = ("prepare.py", "train.py", "program.md", ".pre-commit-config.yaml", "hooks/gitar-hook")
# What `gitar init` adds to a repository laid out like upstream (its own train.py and prepare.py stay).
HOOK_FILES = shared.HOOK_FILES


def template_dir() -> Path:
    """Where this project's workspace files are: the source checkout gitar is installed from (the
    wheel holds the package only, so an editable install is what finds them)."""
    here = Path(gitar.__file__).resolve().parent
    if all((here.parent / f).exists() for f in (*TEMPLATE_FILES, "ground.json")):
        return here.parent
    raise GitarError(f"cannot find the workspace template next to {here}; reinstall gitar "
                     "(pip install -e . from a checkout)", ExitCode.INTERNAL)


# Upstream's constants (prepare.py: CACHE_DIR, TIME_BUDGET, MAX_SEQ_LEN, EVAL_TOKENS, VAL_SHARD,
# VOCAB_SIZE), so a number measured through gitar is comparable with one measured by upstream.
UPSTREAM_GROUND: dict[tuple[str, ...], Any] = {
    ("data", "cache_dir"): "~/.cache/autoresearch",
    ("data", "num_train_shards"): 10,
    ("data", "val_shard"): 6542,
    ("tokenizer", "vocab_size"): 8192,
    ("training", "max_seq_len"): 2048,
    ("training", "time_budget_s", "train"): 300,
    ("training", "eval_tokens"): 40 * 524288,
    # The launcher runs train.py unmodified and exports the model it passes to prepare.evaluate_bpb.
    ("experiment", "command"): ["{python}", "-m", "gitar.runtime.launch", "train.py"],
    ("experiment", "user_owned"): ["prepare.py", "program.md", "pyproject.toml", "uv.lock", "ground.json",
                                   "hooks/", ".pre-commit-config.yaml"],
}

# Why the smoke step is off for such a train.py: it builds the model on the CPU, which one that
# calls torch.cuda or loads FA3 through `kernels` at import cannot do.
SMOKE_OFF_WHY = ("train.py hard-codes CUDA (torch.cuda / kernels FA3), so the CPU smoke step cannot build it: "
                 "ground.json experiment.smoke is false; set it true once train.py runs on the CPU")


def hard_codes_cuda(train_source: str) -> bool:
    return "torch.cuda." in train_source or "from kernels import" in train_source or ".cuda()" in train_source


# Where each of ground.json's upstream keys is a constant in upstream's prepare.py: a fork that
# changed one (a longer budget, another validation shard) gets a ground.json that agrees with it,
# or its first run would be judged on files and budgets its prepare.py does not use.
PREPARE_CONSTANTS: dict[str, tuple[str, ...]] = {
    "CACHE_DIR": ("data", "cache_dir"),
    "VAL_SHARD": ("data", "val_shard"),
    "VOCAB_SIZE": ("tokenizer", "vocab_size"),
    "MAX_SEQ_LEN": ("training", "max_seq_len"),
    "TIME_BUDGET": ("training", "time_budget_s", "train"),
    "EVAL_TOKENS": ("training", "eval_tokens"),
}
_ARITHMETIC: dict[type[ast.operator], Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def prepare_constants(source: str) -> dict[str, Any]:
    """The module-level constants of an upstream-style prepare.py, read without running it: numbers,
    arithmetic on them and on earlier constants (`VAL_SHARD = MAX_SHARD`), and the cache directory
    spelled as upstream does (`os.path.join(os.path.expanduser("~"), ".cache", NAME)`). Anything
    else is left out, and the preset keeps upstream's value for it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    known: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _constant(node.value, known)
            if value is not None:
                known[node.targets[0].id] = value
    return known


def _constant(node: ast.expr, known: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _constant(node.left, known), _constant(node.right, known)
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            return _ARITHMETIC[type(node.op)](left, right)
        return None
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join" and node.args:
        first, rest = node.args[0], node.args[1:]
        parts = [_constant(a, known) for a in rest]
        if ast.unparse(first) == 'os.path.expanduser("~")' or ast.unparse(first) == "os.path.expanduser('~')":
            head = "~"
        else:
            head = _constant(first, known)
        if isinstance(head, str) and all(isinstance(p, str) for p in parts):
            return "/".join([head, *parts])
    return None


def upstream_ground(shipped: dict[str, Any], *, has_model_json: bool, train_source: str,
                    prepare_source: str = "") -> dict[str, Any]:
    """The shipped ground.json for a repository laid out like karpathy/autoresearch, with the
    constants its prepare.py sets where they differ from upstream's."""
    found = prepare_constants(prepare_source)
    values = dict(UPSTREAM_GROUND)
    for name, keys in PREPARE_CONSTANTS.items():
        value = found.get(name)
        if isinstance(value, str) == (name == "CACHE_DIR") and value is not None:
            values[keys] = int(value) if isinstance(value, float) and value.is_integer() else value
    out = _apply(shipped, values)
    out["experiment"]["agent_owned"] = ["train.py", "model.json"] if has_model_json else ["train.py"]
    out["experiment"]["smoke"] = not hard_codes_cuda(train_source)
    return out


def _apply(shipped: dict[str, Any], keys_values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    out = copy.deepcopy(shipped)
    for keys, value in keys_values.items():
        node = out
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = copy.deepcopy(value)
    return out


# The section `gitar init` appends to an upstream program.md, between these markers (re-running
# finds them and adds nothing).
PROGRAM_BEGIN = "<!-- gitar: begin -->"
PROGRAM_END = "<!-- gitar: end -->"
PROGRAM_SECTION = f"""
{PROGRAM_BEGIN}
## The loop with gitar (replaces the manual commit / run / grep / reset steps above)

This repository runs the experiment loop through git hooks (`gitar init` set them up). For each idea:

1. Read `gitar memory` (what was tried, kept, discarded, crashed) and pick an idea.
2. Edit `train.py` (the only file you own; `prepare.py`, `program.md`, `ground.json` and the hooks are the user's).
3. `gitar try "what I changed"`: it commits, trains under the time budget, measures val_bpb with the
   harness, records the result in git notes and keeps the commit or resets the branch. It prints one
   result line; exit 0 kept, 1 not kept (discard, crash, timeout), 2 refused (nothing changed; fix what it says).
4. Do not `git commit`, `git reset`, run `uv run train.py` or grep `run.log` yourself, and do not keep results.tsv:
   `gitar log --tsv` prints it. `gitar show REV` shows a run's log tail.
{PROGRAM_END}
"""
