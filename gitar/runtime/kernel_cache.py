"""Where the `kernels` package keeps FA3 builds, without importing torch (the sandbox asks too).

Upstream's train.py loads FA3 with `kernels.get_kernel(repo)` at import. Inside gitar's sandbox
it has no network and a fresh HOME, so the download cache outside is the only place it can find
the build: gitar/host/confine.py shows exactly these repositories' directories read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

# FA3 as the `kernels` package publishes it: upstream loads varunneal's Hopper-only build on
# sm90 and the kernels-community build on every other GPU (Ampere and later).
FA3_HOPPER_REPO = "varunneal/flash-attention-3"
FA3_COMMUNITY_REPO = "kernels-community/flash-attn3"
FA3_KERNEL_REPOS = (FA3_HOPPER_REPO, FA3_COMMUNITY_REPO)
# Older huggingface_hub caches kernels as models, newer ones as their own repo type.
_REPO_KINDS = ("models", "kernels")


def hub_cache_dirs(kernels_dir: Path | None = None) -> list[Path]:
    """Where FA3 may be cached: the data cache's kernels directory (the one a sandboxed trainer
    can read), then where huggingface_hub / kernels keep downloads (their documented variables)."""
    first = [kernels_dir] if kernels_dir is not None else []
    if os.environ.get("KERNELS_CACHE"):
        return [*first, Path(os.environ["KERNELS_CACHE"])]
    if os.environ.get("HF_HUB_CACHE"):
        return [*first, Path(os.environ["HF_HUB_CACHE"])]
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return [*first, hf_home / "hub"]


def repo_dirs(cache: Path, repo: str) -> list[Path]:
    """The directories of one repository in a hub cache that hold a downloaded snapshot."""
    org, name = repo.split("/")
    return [d for kind in _REPO_KINDS if (d := cache / f"{kind}--{org}--{name}").joinpath("snapshots").is_dir()]


def cached_fa3_dirs() -> tuple[Path, ...]:
    """Every FA3 build's directory in the download caches outside (resolved: binds need real paths)."""
    return tuple(d.resolve() for cache in hub_cache_dirs() for repo in FA3_KERNEL_REPOS for d in repo_dirs(cache, repo))
