"""Which device, number format, attention kernel and compiler a training run uses.

Upstream autoresearch assumes an H100: bf16, FlashAttention 3 fetched from the network at
import (a Hopper build on sm90, the kernels-community build elsewhere), torch.compile, and a
hard-coded 989.5 TFLOP/s for MFU. gitar decides each of these from what the machine actually
has, so the same train.py runs on Volta to Blackwell, on a Mac or on a CPU.

Attention on a CUDA GPU is FA3 where a build is at hand (`pip install -e '.[fa3]'`, then
`python prepare.py` fetches the kernel into the data cache, where the sandboxed trainer can
read it), else PyTorch's FlexAttention (sliding-window block masks, compiled by Triton from
Ampere to Blackwell), a dense [T, T] mask only where neither can run (Volta, Turing, no
Triton); every step down is one warning line. CPU and MPS run SDPA with the mask (no kernel to compile there).


- `probe_device()` reads the facts (cheaply: nothing is compiled or downloaded);
- `detect_platform(processor, probe)` is a pure function from those facts and the
  ground.json "processor" overrides to a frozen `Platform`. A requested backend the
  machine cannot provide falls back to the automatic choice with one line in
  `Platform.warnings`, never a crash;
- `load_flash_attention_3()` imports FA3 when train.py actually needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from gitar.config.schema import ProcessorConfig
from gitar.runtime.kernel_cache import (
    FA3_COMMUNITY_REPO,
    FA3_KERNEL_REPOS,
    hub_cache_dirs,
    repo_dirs,
)

# Dense (no sparsity) fp16/bf16 tensor-core FLOPs per clock per SM, by compute capability.
# An FMA counts as 2 FLOPs. Derived from NVIDIA's architecture whitepapers / datasheets as
# peak = SMs x boost clock x this figure:
#   V100 SXM2  (7.0):  80 SMs x 1.530 GHz x 1024 = 125 TFLOP/s
#   T4         (7.5):  40 SMs x 1.590 GHz x 1024 =  65 TFLOP/s (fp16 accumulate)
#   A100       (8.0): 108 SMs x 1.410 GHz x 2048 = 312 TFLOP/s
#   A6000      (8.6):  84 SMs x 1.800 GHz x 1024 = 155 TFLOP/s
#   L40        (8.9): 142 SMs x 2.490 GHz x 1024 = 362 TFLOP/s
#   H100 SXM   (9.0): 132 SMs x 1.830 GHz x 4096 = 989 TFLOP/s
#   B200      (10.0): 148 SMs x 1.855 GHz x 8192 = 2.25 PFLOP/s
#   RTX 5090  (12.0): 170 SMs x 2.410 GHz x 1024 = 419 TFLOP/s (fp16 accumulate)
# GeForce cards run fp32-accumulate matmuls (what bf16 training uses) at half the listed
# rate, so MFU on them reads low. The clock is the maximum the driver reports, which on
# Hopper is above the datasheet's (1.98 vs 1.83 GHz on H100 SXM: ~1070 instead of 989
# TFLOP/s); set ground.json processor.peak_flops to pin a figure.
FLOPS_PER_CLOCK_PER_SM: dict[tuple[int, int], int] = {
    (7, 0): 1024, (7, 2): 1024, (7, 5): 1024,
    (8, 0): 2048, (8, 6): 1024, (8, 7): 1024, (8, 9): 1024,
    (9, 0): 4096,
    (10, 0): 8192, (10, 3): 8192,
    (12, 0): 1024, (12, 1): 1024,
}

# bf16 needs Ampere's tensor cores; fp16 (with loss scaling) is the fastest format on
# Volta and Turing; below Volta there are no tensor cores and fp32 is as fast as anything.
BF16_MIN_CAPABILITY = (8, 0)
FP16_MIN_CAPABILITY = (7, 0)
# FA3 as the `kernels` package publishes it (gitar/runtime/kernel_cache.py names the builds).
FA3_HOPPER = (9, 0)
FA3_MIN_CAPABILITY = (8, 0)
KERNELS_DIR = "kernels"  # under data.cache_dir: where prepare.py fetches FA3 and the trainer reads it
# FlexAttention's Triton kernels, as PyTorch supports them: Ampere to Blackwell.
FLEX_MIN_CAPABILITY = (8, 0)
FA3_HINT = "pip install -e '.[fa3]' and run `python prepare.py` to fetch it"


def fa3_repos(capability: tuple[int, int] | None) -> tuple[str, ...]:
    """The FA3 builds for a GPU, in the order to try them (upstream's choice first)."""
    if capability is None or capability < FA3_MIN_CAPABILITY:
        return ()
    return FA3_KERNEL_REPOS if capability == FA3_HOPPER else (FA3_COMMUNITY_REPO,)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class DeviceProbe:
    """What the machine offers, as read by `probe_device` (tests build these by hand)."""

    cuda: bool
    mps: bool = False
    device_name: str | None = None
    capability: tuple[int, int] | None = None
    sm_count: int | None = None
    clock_mhz: float | None = None  # maximum SM clock
    os: str = sys.platform
    triton: bool = False
    fa3: bool = False  # an FA3 build for this GPU importable without network: installed, or in a kernels cache


@dataclass(frozen=True)
class Platform:
    """The choices a training run follows. Built by `detect_platform`; never changed after."""

    device: str  # "cuda", "mps" or "cpu"
    device_name: str
    capability: tuple[int, int] | None
    dtype: str  # "bfloat16", "float16" or "float32": the autocast / parameter format
    use_grad_scaler: bool  # fp16 gradients underflow without loss scaling
    attention: str  # "fa3", "flex" (FlexAttention) or "sdpa" (scaled_dot_product_attention, windows in blocks)
    compile: bool
    peak_flops: float | None  # dense tensor FLOP/s for MFU; None where unknown (MFU reads 0)
    fp32_optimizer_state: bool  # keep optimizer moments in fp32 when parameters are fp16
    warnings: tuple[str, ...] = field(default=())

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def describe(self) -> str:
        """One line for logs, e.g. "cuda NVIDIA H100 80GB HBM3 sm90 bfloat16 fa3 compile"."""
        parts = [self.device]
        if self.device == "cuda":
            parts.append(self.device_name)
        if self.capability is not None:
            parts.append(f"sm{self.capability[0]}{self.capability[1]}")
        parts += [self.dtype, self.attention, "compile" if self.compile else "eager"]
        if self.use_grad_scaler:
            parts.append("grad-scaler")
        return " ".join(parts)


# ---------------------------------------------------------------------------
# Probing the machine
# ---------------------------------------------------------------------------


def probe_device(kernels_dir: Path | None = None) -> DeviceProbe:
    """Read the machine's facts. Loads no kernel, compiles nothing, never touches the network.

    kernels_dir: the data cache's kernels directory, searched for FA3 before the usual caches.
    """
    triton = importlib.util.find_spec("triton") is not None
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if not torch.cuda.is_available():
        return DeviceProbe(cuda=False, mps=mps, triton=triton)
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    capability = (int(props.major), int(props.minor))
    return DeviceProbe(
        cuda=True,
        mps=mps,
        device_name=str(props.name),
        capability=capability,
        sm_count=int(props.multi_processor_count),
        clock_mhz=_clock_mhz(props, index),
        triton=triton,
        fa3=bool(fa3_repos(capability)) and (_fa3_installed() or _fa3_in_kernels_cache(capability, kernels_dir)),
    )


def _clock_mhz(props: object, index: int) -> float | None:
    """The maximum SM clock: from torch when it exposes it, else from nvidia-smi."""
    rate = getattr(props, "clock_rate", None)
    if isinstance(rate, (int, float)) and rate > 0:
        # CUDA reports the clock in kHz; some builds convert to MHz. No GPU clocks below 10 MHz.
        return float(rate) / 1000 if rate >= 10_000 else float(rate)
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _fa3_installed() -> bool:
    return importlib.util.find_spec("flash_attn_interface") is not None


def _fa3_cache(capability: tuple[int, int] | None, kernels_dir: Path | None) -> Path | None:
    """The first cache holding an FA3 build for this GPU (any GPU's when capability is None)."""
    if importlib.util.find_spec("kernels") is None:
        return None
    repos = fa3_repos(capability) if capability is not None else FA3_KERNEL_REPOS
    for cache in hub_cache_dirs(kernels_dir):
        if any(repo_dirs(cache, repo) for repo in repos):
            return cache
    return None


def _fa3_in_kernels_cache(capability: tuple[int, int] | None = None, kernels_dir: Path | None = None) -> bool:
    return _fa3_cache(capability, kernels_dir) is not None


# ---------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------


def detect_platform(processor: ProcessorConfig, probe: DeviceProbe) -> Platform:
    """The platform for these overrides on this machine; "auto" / None means decide from the probe."""
    warnings: list[str] = []
    device = _choose_device(processor.device, probe, warnings)
    on_cuda = device == "cuda"
    capability = probe.capability if on_cuda else None
    dtype = _choose_dtype(processor.dtype, device, capability, warnings)
    compile_ = _choose_compile(processor.compile, device, probe, warnings)
    attention = _choose_attention(processor.attention, device, capability, probe, warnings)
    peak = _choose_peak_flops(processor.peak_flops, device, probe, dtype, warnings)
    return Platform(
        device=device,
        device_name=(probe.device_name or "cuda") if on_cuda else device,
        capability=capability,
        dtype=dtype,
        use_grad_scaler=dtype == "float16",
        attention=attention,
        compile=compile_,
        peak_flops=peak,
        fp32_optimizer_state=dtype == "float16",
        warnings=tuple(warnings),
    )


def _auto_device(probe: DeviceProbe) -> str:
    return "cuda" if probe.cuda else "mps" if probe.mps else "cpu"


def _choose_device(requested: str, probe: DeviceProbe, warnings: list[str]) -> str:
    available = {"cuda": probe.cuda, "mps": probe.mps, "cpu": True}
    if requested == "auto":
        return _auto_device(probe)
    if not available[requested]:
        fallback = _auto_device(probe)
        warnings.append(f"processor.device: {requested} is not available here; using {fallback}")
        return fallback
    return requested


def _where(device: str, capability: tuple[int, int] | None) -> str:
    return f"this sm{capability[0]}{capability[1]} GPU" if capability is not None else f"this {device}"


def _auto_dtype(device: str, capability: tuple[int, int] | None) -> str:
    if device != "cuda" or capability is None:
        return "float32"  # CPU and MPS: kept simple and exact
    if capability >= BF16_MIN_CAPABILITY:
        return "bfloat16"
    return "float16" if capability >= FP16_MIN_CAPABILITY else "float32"


def _dtype_supported(dtype: str, device: str, capability: tuple[int, int] | None) -> bool:
    if device == "cuda" and capability is not None:
        return capability >= (BF16_MIN_CAPABILITY if dtype == "bfloat16" else FP16_MIN_CAPABILITY)
    # CPU autocast does bf16 (fast with AMX); fp16 there is slow and has no loss scaling.
    # MPS stays float32: its reduced-precision paths are the least tested.
    return device == "cpu" and dtype == "bfloat16"


def _choose_dtype(requested: str, device: str, capability: tuple[int, int] | None, warnings: list[str]) -> str:
    auto = _auto_dtype(device, capability)
    if requested == "auto":
        return auto
    if requested == "float32" or _dtype_supported(requested, device, capability):
        return requested
    warnings.append(f"processor.dtype: {requested} is not supported on {_where(device, capability)}; using {auto}")
    return auto


def _flex_possible(device: str, capability: tuple[int, int] | None, probe: DeviceProbe) -> bool:
    return device == "cuda" and probe.triton and capability is not None and capability >= FLEX_MIN_CAPABILITY


def _gpu_fallback(device: str, capability: tuple[int, int] | None, probe: DeviceProbe) -> tuple[str, str]:
    """What a CUDA GPU runs without FA3, and why: FlexAttention where Triton can compile it."""
    if _flex_possible(device, capability, probe):
        return "flex", "using FlexAttention (sliding-window block masks, compiled)"
    if device == "cuda":
        why = ("FlexAttention needs triton, which is not installed" if not probe.triton
               else f"FlexAttention's compiled kernels need sm80 or later, not {_where(device, capability)}")
        return "sdpa", f"using sdpa with a dense [T, T] mask, much slower on the short-window layers ({why})"
    return "sdpa", "using sdpa"


def _choose_attention(requested: str, device: str, capability: tuple[int, int] | None, probe: DeviceProbe,
                      warnings: list[str]) -> str:
    fa3_possible = device == "cuda" and bool(fa3_repos(capability)) and probe.fa3
    if requested == "auto":
        if device != "cuda":
            return "sdpa"  # CPU and MPS: no kernel to compile; SDPA on the window's blocks is what they can do
        if fa3_possible:
            return "fa3"
        fallback, how = _gpu_fallback(device, capability, probe)
        if not fa3_repos(capability):
            reason = f"FA3 needs sm80 or later, not {_where(device, capability)}"
        else:
            reason = f"FlashAttention 3 (upstream's kernel) is not available offline ({FA3_HINT})"
        warnings.append(f"attention: {reason}; {how}")
        return fallback
    if requested == "fa3" and not fa3_possible:
        if device != "cuda":
            reason = "FA3 needs a CUDA GPU, and this machine is not using one"
        elif not fa3_repos(capability):
            reason = f"FA3 needs sm80 or later, not {_where(device, capability)}"
        else:
            reason = f"FA3 is neither installed (flash_attn_interface) nor in a local kernels cache ({FA3_HINT})"
        fallback, how = _gpu_fallback(device, capability, probe)
        warnings.append(f"processor.attention: {reason}; {how}")
        return fallback
    if requested == "flex" and device == "cuda" and not _flex_possible(device, capability, probe):
        _, how = _gpu_fallback(device, capability, probe)
        warnings.append(f"processor.attention: flex cannot run here; {how}")
        return "sdpa"
    if requested == "sdpa" and device == "cuda":
        warnings.append("processor.attention: sdpa as asked: the short-window layers use a dense [T, T] mask, "
                        "much slower than fa3 or flex on a GPU")
    return requested


def _choose_compile(requested: bool | None, device: str, probe: DeviceProbe, warnings: list[str]) -> bool:
    # torch.compile generates Triton kernels for CUDA; Triton has no official Windows build.
    cuda_ok = device == "cuda" and probe.triton
    if requested is None:
        return cuda_ok and probe.os != "win32"
    if requested and device == "cuda" and not probe.triton:
        warnings.append("processor.compile: torch.compile needs triton for CUDA, which is not installed; running eager")
        return False
    return requested


def _choose_peak_flops(
    requested: float | None, device: str, probe: DeviceProbe, dtype: str, warnings: list[str]
) -> float | None:
    if requested is not None:
        return requested
    if device != "cuda" or dtype == "float32":
        return None  # no tensor-core figure applies: MFU is reported as 0
    cap = probe.capability
    per_sm = FLOPS_PER_CLOCK_PER_SM.get(cap) if cap is not None else None
    name = probe.device_name or "this GPU"
    if per_sm is None:
        warnings.append(f"processor.peak_flops: no FLOPs-per-clock figure for {_where(device, cap)} ({name}); "
                        "set processor.peak_flops in ground.json to report MFU")
        return None
    if probe.sm_count is None or probe.clock_mhz is None:
        warnings.append(f"processor.peak_flops: could not read the SM count or clock of {name}; "
                        "set processor.peak_flops in ground.json to report MFU")
        return None
    return float(probe.sm_count * probe.clock_mhz * 1e6 * per_sm)


# ---------------------------------------------------------------------------
# Loading FlashAttention 3 (only when train.py asks for it)
# ---------------------------------------------------------------------------


def load_flash_attention_3(capability: tuple[int, int] | None = None,
                           kernels_dir: Path | None = None) -> ModuleType | None:
    """The FA3 module (with `flash_attn_func`), or None when it cannot be loaded offline.

    Tries a source build (`flash_attn_interface`) first, then the `kernels` package with the
    Hugging Face hub switched offline, so only a kernel already in a local cache (kernels_dir
    first: the data cache's, which prepare.py fills) loads: a training run never waits on, or
    fails from, a download. The hub stays offline for the rest of the process, which
    downloads nothing else either. capability: the GPU's, which picks the builds to try.
    """
    if _fa3_installed():
        try:
            return importlib.import_module("flash_attn_interface")
        except Exception:  # a broken build (e.g. for another CUDA) is as good as none
            pass
    cache = _fa3_cache(capability, kernels_dir)
    if cache is None:
        return None
    repos = fa3_repos(capability) if capability is not None else FA3_KERNEL_REPOS
    return _load_from_kernels(repos, cache, offline=True)


def _load_from_kernels(repos: tuple[str, ...], cache: Path, *, offline: bool) -> ModuleType | None:
    os.environ["KERNELS_CACHE"] = str(cache)  # read when kernels is first imported
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported...
    try:
        if offline:
            hub_constants: Any = importlib.import_module("huggingface_hub.constants")
            hub_constants.HF_HUB_OFFLINE = True  # ...and this, in case it already was
        kernels = importlib.import_module("kernels")
    except Exception:
        return None
    for repo in repos:
        try:
            module: ModuleType = _get_kernel(kernels, repo).flash_attn_interface
            return module
        except Exception:  # not cached, or built for another torch: try the next one
            continue
    return None


def _get_kernel(kernels: Any, repo: str) -> Any:
    # revision="main" is the default of older `kernels` and required (a revision or a version)
    # by newer ones; newer ones also trust only listed publishers unless told to trust the repo.
    try:
        return kernels.get_kernel(repo, revision="main", trust_remote_code=[repo])
    except TypeError:  # an older `kernels` without trust_remote_code
        return kernels.get_kernel(repo, revision="main")


def fetch_flash_attention_3(capability: tuple[int, int] | None, kernels_dir: Path) -> str:
    """prepare.py, online: download the FA3 build for this GPU into kernels_dir. One line saying
    what happened; never raises (the trainer falls back to FlexAttention without it)."""
    repos = fa3_repos(capability)
    if not repos:
        return "attention: no FA3 build for this GPU; training uses FlexAttention"
    if _fa3_cache(capability, kernels_dir) == kernels_dir:
        return f"attention: FA3 already in {kernels_dir}"
    if importlib.util.find_spec("kernels") is None:
        return "attention: FA3 not fetched (`kernels` is not installed: pip install -e '.[fa3]'); training uses FlexAttention"
    kernels_dir.mkdir(parents=True, exist_ok=True)
    if _load_from_kernels(repos, kernels_dir, offline=False) is None:
        return f"attention: FA3 could not be fetched or loaded from {', '.join(repos)}; training uses FlexAttention"
    return f"attention: FA3 fetched into {kernels_dir}"
