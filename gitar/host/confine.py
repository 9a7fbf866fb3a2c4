"""What each process gitar starts on the agent's behalf may see: the trainer, the smoke step, the evaluator.

gitar/host/sandbox.py knows how to confine a process; this module knows what each of gitar's
processes needs, and nothing more:

- the trainer: its snapshot (read-write), its output directory (the export and the
  crash record), the tokenizer and the training shards — not the validation shard;
- the smoke step: its copy of the index and what the trainer sees of the data;
- the evaluator: the pinned prepare.py and ground.json, the export and the evaluation
  files, all as private copies gitar wrote after every trainer process was gone, in a
  directory the trainer never saw; and one directory for its result.

gitar's own state under the git dir (logs, locks, running state, the other runs) is
hidden from all three, as are the work tree and the repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gitar.config.schema import AUTO_MEMORY_FRACTION, Ground
from gitar.host import sandbox
from gitar.host.limits import MB, Limits, machine_memory_bytes
from gitar.host.runner import Confined
from gitar.paths import Paths
from gitar.runtime import kernel_cache
from gitar.store import signing
from gitar.store.git import Git

TOKENIZER_DIR = "tokenizer"
# FA3 builds prepare.py fetched (gitar/runtime/platform.py KERNELS_DIR; not imported: that loads torch).
KERNELS_DIR = "kernels"
DATA_DIR = "data"


def limits_of(ground: Ground) -> Limits:
    cfg = ground.experiment.limits
    memory = cfg.memory_mb * MB if cfg.memory_mb is not None else _auto_memory()
    return Limits(memory_bytes=memory, processes=cfg.processes, file_bytes=cfg.file_mb * MB,
                  log_bytes=cfg.log_mb * MB)


def _auto_memory() -> int | None:
    total = machine_memory_bytes()
    return int(total * AUTO_MEMORY_FRACTION) if total else None


def _home() -> Path:
    # The same path as outside, so "~" in ground.json's cache_dir expands alike; its content is a
    # fresh empty directory in every sandbox.
    return Path.home()


def _secrets() -> tuple[Path, ...]:
    """Files no sandboxed process may read even where a bind would show them: the runner's
    signing key (gitar/store/signing.py), whose signature is what makes a record trustworthy."""
    return (signing.key_path().resolve(),)


def protected(git: Git, ground: Ground) -> tuple[Path, ...]:
    """What no bind may expose wholesale: the work tree, the git dirs, the data cache."""
    return tuple(dict.fromkeys([git.root, git.common_dir, git.gitdir, ground.cache_dir]))


def _bwrap(ground: Ground) -> sandbox.Bwrap | None:
    """The sandbox to use, or None for experiment.sandbox "off"; one line if it cannot be had."""
    return None if ground.experiment.sandbox == sandbox.OFF else sandbox.require()


# Upstream's train.py loads FA3 with kernels.get_kernel at import. The sandbox has no network, so
# huggingface_hub is told so (it then reads its cache at once instead of failing on a connection);
# the FA3 builds downloaded outside are shown at their own paths (HOME inside is the same path).
KERNELS_OFFLINE = {"HF_HUB_OFFLINE": "1"}


def training_data(ground: Ground) -> sandbox.DataView:
    """The cache as a trainer sees it: the tokenizer, the training shards and the FA3 kernels
    prepare.py fetched (the trainer has no network to fetch them), nothing else."""
    cache = ground.cache_dir
    files: list[Path] = []
    for directory in (cache / TOKENIZER_DIR, cache / KERNELS_DIR):
        if directory.is_dir():
            files.append(directory)
    for i in range(ground.data.num_train_shards):
        shard = cache / DATA_DIR / f"shard_{i:05d}.parquet"
        if shard.is_file():
            files.append(shard)
    return sandbox.DataView(cache, tuple(files))


def for_training(git: Git, ground: Ground, command: list[str], snapshot: Path, outbox: Path,
                 run_id: str) -> Confined:
    bwrap = _bwrap(ground)
    paths = Paths.of(git)
    confinement = sandbox.Confinement(
        workdir=snapshot, home=_home(), writable=(outbox,),
        readable=(*sandbox.readable_from_command(command), *kernel_cache.cached_fa3_dirs()),
        data=training_data(ground), hidden=(paths.base,), masked=_secrets(), gpu_index=paths.device,
        extra_env=KERNELS_OFFLINE) if bwrap is not None else None
    return Confined(bwrap, confinement, protected(git, ground), limits_of(ground), run_id)


def for_smoke(git: Git, ground: Ground, command: list[str], copy: Path, run_id: str) -> Confined:
    bwrap = _bwrap(ground)
    # The trainer's view of the data (tokenizer, training shards; never the validation shard):
    # gitar's train.py builds the model on random tokens and touches none of it, but an
    # unmodified upstream train.py under the launcher builds its tokenizer and dataloader at
    # module level, before its first step, so with no data its smoke step could never pass.
    # It shows the smoke step nothing the training run it stands for would not see.
    confinement = sandbox.Confinement(
        workdir=copy, home=_home(), readable=sandbox.readable_from_command(command),
        data=training_data(ground), hidden=(Paths.of(git).base,), masked=_secrets(),
        gpu=False) if bwrap is not None else None
    return Confined(bwrap, confinement, protected(git, ground), limits_of(ground), run_id)


def for_evaluation(git: Git, ground: Ground, inputs: Path, results: Path, copies: Mapping[str, Path],
                   run_id: str) -> Confined:
    """inputs: read-only (prepare.py, ground.json, the export, the data pin); results: read-write;
    copies: cache-relative name -> gitar's private copy, shown at the cache's own path."""
    bwrap = _bwrap(ground)
    cache = ground.cache_dir
    paths = Paths.of(git)
    confinement = sandbox.Confinement(
        workdir=results, home=_home(), readable=(inputs,), data=sandbox.DataView(cache, ()),
        overlays=tuple((copy, cache / name) for name, copy in copies.items()),
        hidden=(paths.base,), masked=_secrets(), gpu_index=paths.device) if bwrap is not None else None
    return Confined(bwrap, confinement, protected(git, ground), limits_of(ground), run_id)


def check_available(ground: Ground) -> None:
    """Refuse before anything changes when the sandbox ground.json asks for cannot be had."""
    _bwrap(ground)
