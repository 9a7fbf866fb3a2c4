"""gitar/runtime/attention.py: the exact sliding-window attention in aten operators, and the exports
that use it (gitar's train.py and upstream's shape), which must never hold a dense [T, T] mask."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from gitar.loop import evaluator
from gitar.runtime import attention as attn
from gitar.runtime import launch
from testing.export import attention_calls, load, trained_looking
from testing.model import tiny_gpt


def dense_reference(q, k, v, causal=False, window_size=(-1, -1), softmax_scale=None):
    """FA3's semantics spelled out: every score in float64, one dense [T_q, T_k] mask."""
    t_q, t_k = q.size(1), k.size(1)
    left, right = window_size
    if causal:
        right = 0
    groups = q.size(2) // k.size(2)
    qd, kd, vd = q.double(), k.double().repeat_interleave(groups, dim=2), v.double().repeat_interleave(groups, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(q.size(-1))
    scores = torch.einsum("bihd,bjhd->bhij", qd, kd) * scale
    i = torch.arange(t_q)[:, None] + (t_k - t_q)
    j = torch.arange(t_k)[None, :]
    allowed = ((left < 0) | (j >= i - left)) & ((right < 0) | (j <= i + right))
    weights = scores.masked_fill(~allowed, -math.inf).softmax(-1)
    return torch.einsum("bhij,bjhd->bihd", weights, vd).to(q.dtype)


def qkv(t_q, h, h_kv, d=16, t_k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t_k = t_q if t_k is None else t_k
    return (torch.randn(2, t_q, h, d, generator=g), torch.randn(2, t_k, h_kv, d, generator=g),
            torch.randn(2, t_k, h_kv, d, generator=g))


@pytest.fixture
def sdpa_masks(monkeypatch):
    """The mask shape (None: no mask) and is_causal of every SDPA call attention.py makes."""
    calls: list[tuple[tuple[int, ...] | None, bool]] = []
    real = F.scaled_dot_product_attention

    def counted(q, k, v, attn_mask=None, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), bool(kwargs.get("is_causal"))))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("T", [50, 301, 1100])  # 50, 301: blocks of ceil(T / 4), 301 with a short last one; 1100: BLOCK_Q-row blocks, the last partial
@pytest.mark.parametrize("window", [0, 1, "half", "T-1", "T", "huge", -1])
def test_causal_windows_equal_the_dense_reference(T, window, sdpa_masks):
    left = {"half": T // 2, "T-1": T - 1, "T": T, "huge": 10 * T}.get(window, window)
    q, k, v = qkv(T, 2, 2)
    got = attn.sliding_window_attention(q, k, v, causal=True, window_size=(left, 0))
    torch.testing.assert_close(got, dense_reference(q, k, v, causal=True, window_size=(left, 0)),
                               atol=1e-5, rtol=1e-5)
    rows = attn.block_rows(T)
    if left < 0 or left >= T - 1:  # the window covers T: one fused causal call, no mask
        assert sdpa_masks == [(None, True)]
    else:
        assert len(sdpa_masks) == -(-T // rows) and rows < T
        # Each block reads only the keys its window reaches, and its mask is that small.
        assert all(m is None or (m[0] <= rows and m[1] <= left + rows) for m, _ in sdpa_masks)
        assert not any(m is not None and m[0] * m[1] >= T * T // 2 for m, _ in sdpa_masks)


@pytest.mark.parametrize(("h", "h_kv"), [(4, 2), (6, 1), (3, 3)])
@pytest.mark.parametrize("left", [5, 37, -1])
def test_grouped_query_attention(h, h_kv, left):
    q, k, v = qkv(77, h, h_kv)
    got = attn.sliding_window_attention(q, k, v, causal=True, window_size=(left, 0))
    torch.testing.assert_close(got, dense_reference(q, k, v, causal=True, window_size=(left, 0)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(3, 2), (0, 7), (20, 20), (-1, 4), (6, -1), (-1, -1), (100, 0), (0, 0)])
def test_non_causal_windows(window):
    q, k, v = qkv(70, 4, 2)
    got = attn.sliding_window_attention(q, k, v, window_size=window)
    torch.testing.assert_close(got, dense_reference(q, k, v, window_size=window), atol=1e-5, rtol=1e-5)


def test_causal_overrides_the_right_side_as_fa3():
    q, k, v = qkv(40, 2, 2)
    got = attn.sliding_window_attention(q, k, v, causal=True, window_size=(9, 5))
    torch.testing.assert_close(got, dense_reference(q, k, v, window_size=(9, 0)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(10, 0), (-1, 0), (-1, -1)])
def test_softmax_scale(window):
    q, k, v = qkv(45, 2, 2)
    got = attn.sliding_window_attention(q, k, v, softmax_scale=0.7, window_size=window)
    want = dense_reference(q, k, v, softmax_scale=0.7, window_size=window)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, dense_reference(q, k, v, window_size=window), atol=1e-3)  # the scale counts


@pytest.mark.parametrize("window", [(8, 0), (-1, 0), (4, 3)])
def test_fewer_queries_than_keys_align_the_last_query_with_the_last_key(window):
    q, k, v = qkv(30, 2, 2, t_k=90)
    got = attn.sliding_window_attention(q, k, v, window_size=window)
    torch.testing.assert_close(got, dense_reference(q, k, v, window_size=window), atol=1e-5, rtol=1e-5)


def test_gradients_match_the_dense_reference():
    """The CPU's training path (backend sdpa) backpropagates through the blocks."""
    q, k, v = (t.requires_grad_() for t in qkv(90, 4, 2))
    attn.sliding_window_attention(q, k, v, causal=True, window_size=(30, 0)).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    dense_reference(q, k, v, causal=True, window_size=(30, 0)).square().sum().backward()
    for g, t in zip(got, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad, atol=1e-4, rtol=1e-4)


def test_portable_attention_ignores_the_backend(sdpa_masks):
    def fail(*args, **kwargs):
        raise AssertionError("FA3 called inside portable_attention()")

    q, k, v = qkv(40, 2, 2)
    with attn.portable_attention():
        got = attn.attention(q, k, v, window_size=(10, 0), backend="fa3", flash_attn_func=fail)
    torch.testing.assert_close(got, dense_reference(q, k, v, window_size=(10, 0)), atol=1e-5, rtol=1e-5)
    assert sdpa_masks and not attn.is_portable()


# ---------------------------------------------------------------------------
# The exports
# ---------------------------------------------------------------------------

T_EXPORT = 64


def assert_no_dense_mask(program: torch.export.ExportedProgram, seq_len: int) -> list:
    calls = attention_calls(program)
    assert calls
    for q_shape, k_shape, mask, _causal in calls:
        assert mask is None or tuple(mask[-2:]) != (seq_len, seq_len), (q_shape, k_shape, mask)
        assert mask is None or mask[-2] < seq_len  # a block of queries, not all of them
    return calls


def test_the_export_of_train_py_has_no_dense_mask_and_passes_check_graph(tmp_path: Path):
    model = trained_looking(tiny_gpt(sequence_len=T_EXPORT, depth=4, window_pattern="SSSL")).eval()
    path = tmp_path / "model.pt2"
    launch.export_model(model, path, 3, T_EXPORT)
    program = load(path)
    evaluator.check_program(program)  # pure aten: the evaluator accepts it
    calls = assert_no_dense_mask(program, T_EXPORT)
    windows = train.window_sizes(model.config)
    short = sum(w < T_EXPORT - 1 for w in windows)
    assert short == 3
    blocks = -(-T_EXPORT // attn.block_rows(T_EXPORT))
    assert len(calls) == short * blocks + (len(windows) - short)  # T / block calls per short layer, one per long
    assert sum(causal and mask is None for _, _, mask, causal in calls) == len(windows) - short


def dense_attention(q, k, v, window, backend, flash_attn_func=None):
    """train.py's attention as it was: one SDPA call with a dense [T, T] sliding-window mask."""
    t = q.size(1)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    mask = (j <= i) & (j >= i - window)
    groups = q.size(2) // k.size(2)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2)


def harness_bpb(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], token_bytes) -> float:
    """val_bpb as prepare.evaluate_bpb sums it: nats of the tokens that have bytes over their bytes."""
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            loss = model(x, y, reduction="none").view(-1)
            b = token_bytes[y.view(-1)]
            nats += float((loss * (b > 0)).sum())
            nbytes += int(b.sum())
    return nats / (math.log(2) * nbytes)


def test_the_harness_number_of_the_export_equals_the_eager_dense_model(tmp_path: Path, monkeypatch):
    vocab = 64
    model = trained_looking(tiny_gpt(vocab_size=vocab, sequence_len=T_EXPORT, depth=4, window_pattern="SSSL")).eval()
    path = tmp_path / "model.pt2"
    launch.export_model(model, path, 4, T_EXPORT)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randint(0, vocab, (4, T_EXPORT), generator=g), torch.randint(0, vocab, (4, T_EXPORT), generator=g))
               for _ in range(3)]
    token_bytes = torch.randint(0, 4, (vocab,), generator=g)
    probed = evaluator.ProbedModel(evaluator.ExportedModel(load(path)), vocab, 1e-3, seed=3)
    exported_bpb = harness_bpb(probed, batches, token_bytes)
    assert probed.result().ok
    monkeypatch.setattr(train, "attention", dense_attention)  # the eager model as the dense mask computes it
    eager_bpb = harness_bpb(model, batches, token_bytes)
    assert exported_bpb == pytest.approx(eager_bpb, rel=1e-6)
