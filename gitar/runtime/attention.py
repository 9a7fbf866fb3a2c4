"""Attention for train.py and for the export of any train.py: the kernels, their plumbing, and one
exact sliding-window attention in plain aten operators.

Layout and masking are FlashAttention 3's throughout: q [B, T_q, H, D], k and v [B, T_k, Hkv, D]
(grouped-query: query head h reads kv head h // (H / Hkv)), window_size (left, right) with -1
unlimited, query i sees key j when i + (T_k - T_q) - left <= j <= i + (T_k - T_q) + right (FA3
aligns the last query with the last key); causal sets right to 0.

- sliding_window_attention: that attention in aten operators only (the export's, the CPU's):
  queries in blocks of BLOCK_Q rows, each block calling SDPA on just the keys its window can
  reach with a small [rows, keys] mask, so a window of W costs about T·(W + BLOCK_Q) scores, not
  T². A window that covers the sequence is one call with is_causal=True (the fused causal kernel)
  or no mask at all. Never a dense [T, T] mask.
- attention: the backend's kernel (FA3, FlexAttention with a block mask, or the above). While a
  model is exported (torch.export, or inside portable_attention()), always the above: FA3's kernel
  and a FlexAttention block mask are not aten operators the harness can load.
- choose_attention_kernel: the platform's backend with FA3 loaded, or a loud fallback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Query rows per SDPA call of a windowed attention. Every block also reads the BLOCK_Q - 1 keys its
# first row cannot see, so a window of W costs (W + BLOCK_Q) / (W + 1) of the exact band: 1.25 at
# the shipped model's W = 1024 (47 % of the dense square at T = 2048), in T / 256 = 8 calls per
# windowed layer, which keeps the exported graph small. Smaller blocks waste fewer scores but run
# worse: on the CPU, SDPA tiles a query shorter than 192 rows in 32-row pieces (128-row blocks
# measured no faster than 256 at T = 2048, W = 1024, and slower on two busy threads; 512 slower
# still, benchmarks/bench_attention.py); on a GPU 256 rows are whole query tiles of its kernels
# (not timed on one yet: benchmarks/gpu_check.py's `export attention` row does).
BLOCK_Q = 256
# At least this many blocks on short sequences (below 4 × BLOCK_Q tokens, blocks of T / 4): no
# block's mask spans the sequence, and the band still saves most of the square.
MIN_BLOCKS = 4

_portable = [0]  # depth of portable_attention() contexts


@contextlib.contextmanager
def portable_attention() -> Iterator[None]:
    """attention() runs sliding_window_attention whatever the backend, for a while: the launcher
    exports under it, and a benchmark can time the export's attention eagerly."""
    _portable[0] += 1
    try:
        yield
    finally:
        _portable[0] -= 1


def is_portable() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", None)  # newer than some torch a workspace may pin
    return _portable[0] > 0 or (exporting is not None and bool(exporting()))


def _limits(t_q: int, t_k: int, causal: bool, window_size: tuple[int, int]) -> tuple[int | None, int | None]:
    """(left, right) with None for unlimited, also where a finite limit excludes no key."""
    left, right = int(window_size[0]), int(window_size[1])
    if causal:
        right = 0
    offset = t_k - t_q
    # The earliest key a query may want is i + offset - left; at or below 0 for every query, the
    # limit excludes nothing. Likewise the latest, i + offset + right, at or past the last key.
    lo: int | None = None if left < 0 or offset + t_q - 1 - left <= 0 else left
    hi: int | None = None if right < 0 or offset + right >= t_k - 1 else right
    return lo, hi


def block_rows(t_q: int) -> int:
    return max(1, min(BLOCK_Q, -(-t_q // MIN_BLOCKS)))


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None,
                             causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                             **_ignored: Any) -> torch.Tensor:
    """FlashAttention 3's flash_attn_func, exactly, in aten operators (see the module docstring).
    FA3 options that do not change a forward at their defaults (softcap 0, deterministic, ...)
    are accepted and ignored."""
    t_q, t_k = q.size(1), k.size(1)
    left, right = _limits(t_q, t_k, causal, window_size)
    offset = t_k - t_q
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # SDPA wants [B, H, T, D]
    if kh.size(1) != qh.size(1):
        # Expanded kv heads work with every SDPA kernel and mask; enable_gqa is not supported by all of them.
        groups = qh.size(1) // kh.size(1)
        kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    if left is None and right is None:
        y = F.scaled_dot_product_attention(qh, kh, vh, scale=softmax_scale)
        return y.transpose(1, 2)
    if left is None and right == 0 and offset == 0:
        # Causal over the whole sequence: the fused causal kernel (FlashAttention 2 on a GPU), no mask.
        y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=softmax_scale)
        return y.transpose(1, 2)
    rows = block_rows(t_q)
    outputs = []
    for start in range(0, t_q, rows):
        end = min(start + rows, t_q)
        # The keys some query of this block may see: [lo, hi).
        lo = 0 if left is None else max(0, start + offset - left)
        hi = t_k if right is None else min(t_k, end - 1 + offset + right + 1)
        if hi <= lo:  # no query of the block sees any key: FA3 gives zeros
            outputs.append(qh.new_zeros(qh.size(0), qh.size(1), end - start, vh.size(-1)))
            continue
        i = torch.arange(start + offset, end + offset, device=q.device)[:, None]
        j = torch.arange(lo, hi, device=q.device)[None, :]
        mask = None
        # Only what a limit cuts off inside [lo, hi) needs masking: a block whose every query sees
        # every key of the slice is unmasked (its rows and columns are static, so this is known here).
        if left is not None and lo < end - 1 + offset - left:
            mask = j >= i - left
        if right is not None and hi - 1 > start + offset + right:
            below = j <= i + right
            mask = below if mask is None else mask & below
        outputs.append(F.scaled_dot_product_attention(qh[:, :, start:end], kh[:, :, lo:hi], vh[:, :, lo:hi],
                                                      attn_mask=mask, scale=softmax_scale))
    return torch.cat(outputs, dim=2).transpose(1, 2)


# ---------------------------------------------------------------------------
# FlexAttention: a block mask skips the blocks outside the window; compiled on a GPU
# ---------------------------------------------------------------------------


def sliding_window_block_mask(seq_len: int, left: int | None, right: int | None, device: torch.device) -> Any:
    """FlexAttention's block mask for the window: blocks wholly outside it are skipped, so a
    short-window layer costs what its window holds, not [T, T]."""
    from torch.nn.attention.flex_attention import create_block_mask

    def in_window(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        ok = kv_idx >= 0
        if left is not None:
            ok = ok & (q_idx - kv_idx <= left)
        if right is not None:
            ok = ok & (kv_idx - q_idx <= right)
        return ok

    return create_block_mask(in_window, None, None, seq_len, seq_len, device=device)


# Eager runs build each block mask once; compiled ones build it in the graph, where it is a constant
# of the static shapes (torch.compile does not trace through lru_cache and warns about it).
cached_sliding_window_block_mask = functools.lru_cache(maxsize=32)(sliding_window_block_mask)
_COMPILED_FLEX: list[Callable[..., Any]] = []  # torch.compile(flex_attention), made on first use on a GPU


def flex_attention_kernel(device: torch.device) -> Callable[..., Any]:
    """flex_attention as it should run here. Eager it computes the full score matrix (slow, fine
    for a CPU test); on a GPU it must be compiled into its Triton kernel: inside a compiled model
    the model's compilation does that, outside it a compiled flex_attention of its own."""
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              window_size: tuple[int, int] = (-1, -1), backend: str = "sdpa",
              flash_attn_func: Callable[..., Any] | None = None, softmax_scale: float | None = None) -> torch.Tensor:
    """The window (FA3's semantics, module docstring) on the backend's kernel: "fa3" (flash_attn_func),
    "flex" (FlexAttention) or "sdpa" (sliding_window_attention). q [B, T, H, D] -> [B, T, H, D]."""
    if not is_portable():
        if backend == "fa3":
            if flash_attn_func is None:
                raise ValueError("attention backend fa3 needs the FlashAttention 3 kernel")
            y = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size)
            out: torch.Tensor = y[0] if isinstance(y, tuple) else y  # some FA3 builds return (out, softmax_lse)
            return out
        left, right = _limits(q.size(1), k.size(1), causal, window_size)
        windowed = not (left is None and (right is None or right == 0))
        if backend == "flex" and windowed and q.size(1) == k.size(1):
            make_mask = (sliding_window_block_mask if torch.compiler.is_compiling()
                         else cached_sliding_window_block_mask)
            qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            y = flex_attention_kernel(q.device)(qh, kh, vh, block_mask=make_mask(q.size(1), left, right, q.device),
                                                scale=softmax_scale, enable_gqa=kh.size(1) != qh.size(1))
            flexed: torch.Tensor = y.transpose(1, 2)
            return flexed
    return sliding_window_attention(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size)


# ---------------------------------------------------------------------------
# The backend of a run
# ---------------------------------------------------------------------------


def choose_attention_kernel(platform: Any, fa3_dir: Path | None) -> tuple[str, Callable[..., Any] | None]:
    """(backend, flash_attn_func) for this run: the platform's choice, with FA3 loaded (offline,
    from an installed build or the kernels cache prepare.py filled). An FA3 that will not load
    falls back to FlexAttention (sdpa without Triton), in one loud line."""
    if platform.attention != "fa3":
        return platform.attention, None
    from gitar.runtime.platform import load_flash_attention_3
    fa3 = load_flash_attention_3(platform.capability, fa3_dir)
    if fa3 is not None:
        return "fa3", fa3.flash_attn_func
    fallback = "flex" if importlib.util.find_spec("triton") is not None else "sdpa"
    print(f"warning: FALLBACK: FlashAttention 3 was chosen but could not be loaded; attention runs {fallback} "
          "instead (numbers differ slightly from upstream's FA3; rerun `python prepare.py` to fetch FA3)", flush=True)
    return fallback, None
