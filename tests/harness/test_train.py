"""train.py: the model, its attention backends, the optimizer and schedules, and the script's contract.

The unit tests import the repository's train.py (nothing in it runs at import). The script tests
run `python train.py` in a throwaway workspace: the smoke check (GITAR_SMOKE=1), its failures and
crash records, and, marked slow, a real training run of the tiny CPU preset on prepared data.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from gitar.config.schema import ProcessorConfig
from gitar.demo.presets import cpu_model
from gitar.runtime.crash import write_crash_record
from testing.hermetic import env_without_gitar
from testing.model import model_cfg, tiny_gpt
from testing.prepared import script_workspace

REPO_ROOT = Path(__file__).resolve().parents[2]

# The progress line gitar parses, exactly as the brief fixes it.
STEP_LINE = re.compile(
    r"^step (\d{5,}) \| loss (\d+\.\d{6}) \| lrm (\d+\.\d{3}) \| dt (\d+)ms \| tok/s (\d+) \| "
    r"mfu (\d+\.\d)% \| epoch (\d+) \| train (\d+\.\d)/(\d+(?:\.\d+)?)s$"
)
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth", "device", "dtype", "attention", "bytes_rule", "seed"]


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


def naive_attention(q, k, v, window):
    """Softmax over the allowed keys j of each query i (i - window <= j <= i), one position at a time."""
    B, T, H, D = q.shape
    groups = H // k.size(2)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kv_head = h // groups
            for i in range(T):
                allowed = range(max(0, i - window), i + 1)
                scores = torch.stack([q[b, i, h] @ k[b, j, kv_head] for j in allowed]) / math.sqrt(D)
                weights = torch.softmax(scores, dim=0)
                out[b, i, h] = sum(w * v[b, j, kv_head] for w, j in zip(weights, allowed, strict=True))
    return out


@pytest.mark.parametrize(("T", "window", "n_head", "n_kv_head"), [
    (12, 3, 2, 2),  # window much shorter than T: the mask path
    (12, 11, 2, 2),  # window = T - 1 covers everything: the fused causal path
    (12, 12, 2, 2),  # window = T, as the L layers use
    (12, 5, 4, 2),  # grouped-query attention with a window
    (12, 40, 6, 2),  # grouped-query attention, full context
])
def test_sdpa_matches_naive_attention(T, window, n_head, n_kv_head):
    torch.manual_seed(0)
    q = torch.randn(2, T, n_head, 8)
    k = torch.randn(2, T, n_kv_head, 8)
    v = torch.randn(2, T, n_kv_head, 8)
    got = train.attention(q, k, v, window, "sdpa")
    assert got.shape == q.shape
    torch.testing.assert_close(got, naive_attention(q, k, v, window), atol=1e-5, rtol=1e-5)


def test_the_window_really_limits_what_a_query_sees():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 10, 1, 8) for _ in range(3))
    v2 = v.clone()
    v2[:, 2] += 100.0  # key 2 is outside the window of query 9 when the window is 3 (keys 6..9)
    assert torch.equal(train.attention(q, k, v, 3, "sdpa")[:, 9], train.attention(q, k, v2, 3, "sdpa")[:, 9])
    assert not torch.allclose(train.attention(q, k, v, 9, "sdpa")[:, 9], train.attention(q, k, v2, 9, "sdpa")[:, 9])


def reference_attention(q, k, v, window):
    """SDPA in float32 with an explicit boolean mask (i - window <= j <= i) and expanded kv heads."""
    T = q.size(1)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (j >= i - window)
    groups = q.size(2) // k.size(2)
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2).float()


# FlexAttention run eagerly (what a CPU can do) warns that it is not compiled: expected here.
flex_eager = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile.*")


@pytest.fixture
def flex_calls(monkeypatch):
    """Counts FlexAttention's calls: the flex backend must really run it, not the dense mask."""
    import torch.nn.attention.flex_attention as flex_module
    calls = []
    real = flex_module.flex_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("block_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(flex_module, "flex_attention", counted)
    return calls


@flex_eager
@pytest.mark.parametrize(("T", "window", "n_head", "n_kv_head"), [
    (50, 7, 2, 2),  # T not a multiple of the 128-token block: a partial block
    (200, 100, 2, 2),  # S layer of T = 200: the window is T // 2, blocks straddle it
    (300, 150, 4, 2),  # grouped-query attention, three blocks, the last one partial
    (129, 1, 2, 1),  # a window of one earlier token, one kv head for all
    (130, 129, 2, 2),  # window = T - 1: the full causal path
    (64, 64, 2, 2),  # window = T, as the L layers use
])
def test_flex_matches_reference_attention(T, window, n_head, n_kv_head, flex_calls):
    torch.manual_seed(0)
    q = torch.randn(2, T, n_head, 16)
    k = torch.randn(2, T, n_kv_head, 16)
    v = torch.randn(2, T, n_kv_head, 16)
    got = train.attention(q, k, v, window, "flex")
    assert got.shape == q.shape
    torch.testing.assert_close(got, reference_attention(q, k, v, window), atol=2e-5, rtol=2e-5)
    # A short window runs FlexAttention; one that covers T runs the fused causal kernel, unmasked.
    assert len(flex_calls) == (1 if window < T - 1 else 0)


@flex_eager
@pytest.mark.parametrize("pattern", ["SSSL", "SL", "S", "L", "SSL"])
def test_flex_model_equals_the_sdpa_model_for_every_window_pattern(pattern, flex_calls):
    """The whole model, every layer's window as the pattern sets it (T = 40: S layers see 20
    earlier tokens), flex and sdpa give the same logits. (Eager FlexAttention has no backward on a
    CPU; the compiled kernel's is checked on the GPU.)"""
    T = 40
    arch = model_cfg(depth=4, aspect_ratio=16, head_dim=16, window_pattern=pattern).architecture
    models = {}
    for backend in ("flex", "sdpa"):
        torch.manual_seed(3)
        models[backend] = train.build_model(train.gpt_config(arch, 64, T, backend), torch.device("cpu"))
        for p in models[backend].parameters():  # zero projections would hide the attention entirely
            p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    assert train.window_sizes(models["flex"].config)[0] == (20 if pattern[0] == "S" else 40)
    idx = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = {b: m(idx) for b, m in models.items()}
    torch.testing.assert_close(logits["flex"], logits["sdpa"], atol=1e-5, rtol=1e-5)
    assert len(flex_calls) == sum(w < T - 1 for w in train.window_sizes(models["flex"].config))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with Triton")
@pytest.mark.parametrize(("T", "window", "n_kv_head"), [(2048, 1024, 4), (1000, 500, 2)])
def test_compiled_flex_matches_sdpa_on_the_gpu(T, window, n_kv_head):
    torch.manual_seed(0)
    q = torch.randn(2, T, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, T, n_kv_head, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, T, n_kv_head, 128, device="cuda", dtype=torch.bfloat16)
    q.requires_grad_()
    got = train.attention(q, k, v, window, "flex")
    want = train.attention(q, k, v, window, "sdpa")
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    (grad_flex,) = torch.autograd.grad(got.float().square().sum(), q)
    (grad_sdpa,) = torch.autograd.grad(want.float().square().sum(), q)
    torch.testing.assert_close(grad_flex.float(), grad_sdpa.float(), atol=5e-2, rtol=5e-2)


def test_fa3_that_will_not_load_falls_back_to_flex_loudly(capsys, monkeypatch):
    from gitar.runtime import platform
    monkeypatch.setattr(platform, "load_flash_attention_3", lambda *a, **k: None)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "triton" else real_find_spec(name, *a))
    hopper = platform.detect_platform(ProcessorConfig("auto", "auto", "auto", None, None),
                                      platform.DeviceProbe(cuda=True, device_name="H100", capability=(9, 0),
                                                           sm_count=132, clock_mhz=1830, triton=True, fa3=True))
    assert hopper.attention == "fa3"
    assert train.choose_attention_kernel(hopper, None) == ("flex", None)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("warning: FALLBACK: FlashAttention 3 was chosen but could not "
                                                   "be loaded; attention runs flex")


def _hopper_with_fa3():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return None
    from gitar.runtime.platform import load_flash_attention_3
    return load_flash_attention_3()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA Hopper GPU with FlashAttention 3")
@pytest.mark.parametrize(("window", "n_kv_head"), [(64, 4), (1024, 4), (100, 2)])
def test_fa3_matches_sdpa_on_hopper(window, n_kv_head):
    fa3 = _hopper_with_fa3()
    if fa3 is None:
        pytest.skip("FlashAttention 3 needs Hopper (sm90) and a local FA3 build or kernels cache")
    torch.manual_seed(0)
    q = torch.randn(2, 256, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 256, n_kv_head, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 256, n_kv_head, 128, device="cuda", dtype=torch.bfloat16)
    got = train.attention(q, k, v, window, "fa3", fa3.flash_attn_func)
    want = train.attention(q, k, v, window, "sdpa")
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["SL", "S", "L", "SSL"])
def test_logits_at_t_ignore_tokens_after_t(pattern):
    model = tiny_gpt(window_pattern=pattern, sequence_len=16)
    for p in model.parameters():  # zero-initialised projections would hide a leak through attention
        p.data.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx)
        assert logits.shape == (2, 16, 64) and logits.dtype == torch.float32
        for t in (0, 5, 14):
            changed = idx.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 64
            after = model(changed)
            torch.testing.assert_close(after[:, :t + 1], logits[:, :t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(after[:, t + 1:], logits[:, t + 1:])


def expected_param_count(depth, dim, n_head, vocab):
    ve_layers = [i for i in range(depth) if i % 2 == (depth - 1) % 2]
    per_layer = 12 * dim * dim  # q, k, v, proj (4·d²) and the MLP's two 4× matrices (8·d²)
    gates = len(ve_layers) * min(32, dim) * n_head
    return 2 * vocab * dim + len(ve_layers) * vocab * dim + depth * per_layer + gates + 2 * depth


@pytest.mark.parametrize(("arch", "vocab", "dim", "n_head"), [
    ({"depth": 8, "aspect_ratio": 64, "head_dim": 128, "window_pattern": "SSSL"}, 8192, 512, 4),  # shipped
    ({"depth": 2, "aspect_ratio": 64, "head_dim": 64, "window_pattern": "SL"}, 2048, 128, 2),  # CPU preset
    ({"depth": 3, "aspect_ratio": 50, "head_dim": 64, "window_pattern": "L"}, 300, 192, 3),  # 150 rounds up
])
def test_model_dimensions_and_parameter_count(arch, vocab, dim, n_head):
    config = train.gpt_config(model_cfg(**arch).architecture, vocab, 64, "sdpa")
    assert (config.n_embd, config.n_head, config.n_kv_head, config.n_layer) == (dim, n_head, n_head, arch["depth"])
    with torch.device("meta"):  # shapes only: no memory for the 50M-parameter shipped model
        model = train.GPT(config)
    counts = model.num_scaling_params()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == expected_param_count(arch["depth"], dim, n_head, vocab)
    assert sorted(int(i) for i in model.value_embeds) == [i for i in range(arch["depth"])
                                                          if i % 2 == (arch["depth"] - 1) % 2]
    assert arch["depth"] - 1 in {int(i) for i in model.value_embeds}  # the last layer always has one


def test_shipped_model_json_builds_the_upstream_model():
    cfg = train.load_model(REPO_ROOT / "model.json")
    config = train.gpt_config(cfg.architecture, 8192, 2048, "sdpa")
    assert (config.n_embd, config.n_head) == (512, 4)
    assert train.window_sizes(config) == [1024, 1024, 1024, 2048, 1024, 1024, 1024, 2048]


@pytest.mark.parametrize(("pattern", "depth", "want"), [
    ("SSSL", 8, [128, 128, 128, 256, 128, 128, 128, 256]),
    ("SSSS", 3, [128, 128, 256]),  # the last layer is always full context
    ("L", 2, [256, 256]),
    ("SL", 5, [128, 256, 128, 256, 256]),
])
def test_window_sizes_per_pattern(pattern, depth, want):
    config = train.gpt_config(model_cfg(depth=depth, window_pattern=pattern).architecture, 64, 256, "sdpa")
    assert train.window_sizes(config) == want


def upstream_initial_weights(config: train.GPTConfig, seed: int) -> dict[str, torch.Tensor]:
    """Upstream autoresearch's initial weights, drawn by hand in the order its construction draws
    them: the model is built on the meta device (no default initialiser draws anything), then
    init_weights fills wte ~ N(0, 1), lm_head ~ N(0, 0.001), per block c_q, c_k, c_v, c_fc ~ U(-s, s),
    then every value embedding ~ U(-s, s); projections and gates are zero, the scalars constant."""
    torch.manual_seed(seed)
    V, D = config.vocab_size, config.n_embd
    head_dim = D // config.n_head
    kv = config.n_kv_head * head_dim
    s = 3**0.5 * D**-0.5
    out = {"transformer.wte.weight": torch.empty(V, D).normal_(0.0, 1.0),
           "lm_head.weight": torch.empty(V, D).normal_(0.0, 0.001)}
    ve_layers = [i for i in range(config.n_layer) if i % 2 == (config.n_layer - 1) % 2]
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        for name, rows in (("attn.c_q", config.n_head * head_dim), ("attn.c_k", kv), ("attn.c_v", kv), ("mlp.c_fc", 4 * D)):
            out[h + name + ".weight"] = torch.empty(rows, D).uniform_(-s, s)
        out[h + "attn.c_proj.weight"] = torch.zeros(D, D)
        out[h + "mlp.c_proj.weight"] = torch.zeros(D, 4 * D)
        if i in ve_layers:
            out[h + "attn.ve_gate.weight"] = torch.zeros(config.n_kv_head, min(32, D))
    for i in ve_layers:
        out[f"value_embeds.{i}.weight"] = torch.empty(V, kv).uniform_(-s, s)
    out["resid_lambdas"] = torch.ones(config.n_layer)
    out["x0_lambdas"] = torch.full((config.n_layer,), 0.1)
    return out


@pytest.mark.parametrize(("depth", "pattern", "n_kv_head"), [(4, "SSSL", None), (3, "SL", 1)])
def test_same_seed_gives_upstreams_initial_weights(depth, pattern, n_kv_head):
    """Seed 42 gives upstream's initial weights, every tensor bit for bit: the layers' default
    initialisers must not draw from the RNG before init_weights does."""
    arch = model_cfg(depth=depth, aspect_ratio=16, head_dim=16, window_pattern=pattern).architecture
    config = train.gpt_config(arch, 96, 32, "sdpa")
    if n_kv_head is not None:
        config.n_kv_head = n_kv_head
    want = upstream_initial_weights(config, seed=42)
    torch.manual_seed(42)
    model = train.build_model(config, torch.device("cpu"))
    got = dict(model.named_parameters())
    assert sorted(got) == sorted(want)
    differ = [name for name in want if not torch.equal(got[name].detach(), want[name])]
    assert differ == [], f"{len(differ)} of {len(want)} tensors differ from upstream's: {differ}"
    # Upstream stores the embeddings in bf16 on the GPU: the same values, cast.
    torch.manual_seed(42)
    bf16 = train.build_model(config, torch.device("cpu"), embedding_dtype=torch.bfloat16)
    assert bf16.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(bf16.transformer.wte.weight, want["transformer.wte.weight"].bfloat16())
    # The buffers are real tables, not the meta device's placeholders.
    assert model.cos.device.type == "cpu" and torch.equal(model.cos, model._rotary_tables(model.rotary_seq_len)[0])


def test_fa3_backend_without_a_kernel_is_refused():
    config = train.gpt_config(model_cfg().architecture, 64, 16, "fa3")
    with pytest.raises(ValueError, match="fa3"):
        train.GPT(config)


# ---------------------------------------------------------------------------
# Optimizer and schedules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 64, 32), (3, 32, 64), (2, 48, 48)])
def test_polar_express_orthogonalizes(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    singular_values = torch.linalg.svdvals(train.orthogonalize(g, train.MUON_NS_STEPS, torch.float32))
    # Polar Express aims for singular values near 1 (not exactly: 5 steps trade precision for speed).
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25
    assert torch.linalg.svdvals(g).max() > 5  # the input was far from orthogonal


def fixed_batch(vocab=64, T=16, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (4, T), generator=gen), torch.randint(0, vocab, (4, T), generator=gen)


@pytest.mark.parametrize("fp32_state", [False, True])
def test_one_optimizer_step_reduces_the_loss(fp32_state, capsys):
    model = tiny_gpt()
    opt_cfg = model_cfg().optimization
    optimizer = train.setup_optimizer(model, opt_cfg, fp32_state=fp32_state)
    kinds = [g["kind"] for g in optimizer.param_groups]
    assert kinds[:5] == ["adamw"] * 5 and set(kinds[5:]) == {"muon"}
    x, y = fixed_batch()
    before = model(x, y)
    before.backward()
    train.apply_schedules(optimizer, 0.0, 0, opt_cfg)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = model(x, y)
    assert after.item() < before.item() - 0.01
    assert "Scaling AdamW LRs" in capsys.readouterr().out


def test_training_steps_keep_reducing_the_loss():
    model = tiny_gpt()
    opt_cfg = model_cfg().optimization
    optimizer = train.setup_optimizer(model, opt_cfg)
    x, y = fixed_batch()
    losses = []
    for step in range(8):
        loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        train.apply_schedules(optimizer, 0.0, step, opt_cfg)
        optimizer.step()
        model.zero_grad(set_to_none=True)
    assert losses[-1] < 0.7 * losses[0]  # memorising one batch: a working optimizer gets far quickly


def test_fp32_state_keeps_moments_in_float32_for_bf16_parameters():
    weight = torch.nn.Parameter(torch.randn(16, 8).to(torch.bfloat16))
    optimizer = train.MuonAdamW([{"kind": "adamw", "params": [weight], "lr": 0.1, "betas": (0.8, 0.95),
                                  "eps": 1e-10, "weight_decay": 0.0}], fp32_state=True)
    before = weight.detach().clone()
    weight.grad = torch.randn(16, 8).to(torch.bfloat16)
    optimizer.step()
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight.detach(), before)


def test_grad_scaler_skips_a_step_with_inf_gradients():
    model = tiny_gpt()
    opt_cfg = model_cfg().optimization
    optimizer = train.setup_optimizer(model, opt_cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = fixed_batch()

    def scaled_step(poison: bool):
        scaler.scale(model(x, y)).backward()
        if poison:
            model.lm_head.weight.grad[0, 0] = float("inf")
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        model.zero_grad(set_to_none=True)

    snapshot = [p.detach().clone() for p in model.parameters()]
    scaled_step(poison=True)
    assert all(torch.equal(a, p) for a, p in zip(snapshot, model.parameters(), strict=True))
    assert scaler.get_scale() < 1024.0
    scaled_step(poison=False)
    assert not all(torch.equal(a, p) for a, p in zip(snapshot, model.parameters(), strict=True))


def test_lr_schedule_follows_the_formula():
    obj = cpu_model()
    obj["optimization"].update(warmup_ratio=0.1, warmdown_ratio=0.5, final_lr_frac=0.1)
    opt = train.parse_model(obj, Path("model.json")).optimization
    assert train.lr_multiplier(0.0, opt) == 0.0
    assert train.lr_multiplier(0.05, opt) == pytest.approx(0.5)
    assert train.lr_multiplier(0.3, opt) == 1.0
    assert train.lr_multiplier(0.75, opt) == pytest.approx(0.5 + 0.5 * 0.1)
    assert train.lr_multiplier(1.0, opt) == pytest.approx(0.1)


def test_lr_schedule_of_the_shipped_model_json():
    opt = train.load_model(REPO_ROOT / "model.json").optimization  # no warmup, warmdown over the second half to 0
    assert [train.lr_multiplier(p, opt) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.5, 0.0])


def test_lr_schedule_without_warmdown_stays_flat_to_the_end():
    obj = cpu_model()
    obj["optimization"].update(warmup_ratio=0.0, warmdown_ratio=0.0)
    opt = train.parse_model(obj, Path("model.json")).optimization
    assert train.lr_multiplier(1.0, opt) == 1.0


def test_momentum_and_weight_decay_schedules():
    opt = train.load_model(REPO_ROOT / "model.json").optimization
    assert [train.muon_momentum(s) for s in (0, 150, 300, 5000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert [train.weight_decay(p, opt) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.2, 0.1, 0.0])
    model = tiny_gpt()
    optimizer = train.setup_optimizer(model, opt)
    assert train.apply_schedules(optimizer, 0.75, 150, opt) == pytest.approx(0.5)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.5 * group["initial_lr"])
        if group["kind"] == "muon":
            assert group["momentum"] == pytest.approx(0.90) and group["weight_decay"] == pytest.approx(0.05)


# ---------------------------------------------------------------------------
# The script: smoke mode, failures, crash records
# ---------------------------------------------------------------------------


def script_env(workspace: Path, **extra: str) -> dict[str, str]:
    env = env_without_gitar()
    # gitar (prepare.py's config loader) comes from this checkout; the workspace holds the scripts.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_script(workspace: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    # As gitar runs it (ground.json experiment.command): the launcher adds the crash record and the export.
    return subprocess.run([sys.executable, "-m", "gitar.runtime.launch", "train.py"], cwd=workspace,
                          env=script_env(workspace, **extra),
                          capture_output=True, text=True, timeout=timeout)


def read_crash(path: Path) -> dict:
    record = json.loads(path.read_text())
    assert set(record) == {"type", "message", "traceback", "phase", "step"}
    assert isinstance(record["traceback"], list) and len(record["traceback"]) <= 20
    return record


@pytest.mark.parametrize("preset", [False, True], ids=["shipped", "cpu-preset"])
def test_smoke_mode_passes_for_the_shipped_model_and_the_cpu_preset(tmp_path, preset):
    ws = script_workspace(tmp_path / "ws", preset=preset)
    crash = tmp_path / "crash.json"
    result = run_script(ws, GITAR_SMOKE="1", GITAR_CRASH_FILE=str(crash))
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"smoke: ok loss=(\d+\.\d+) params=(\d+\.\d)M", last)
    assert match, result.stdout
    vocab = json.loads((ws / "ground.json").read_text())["tokenizer"]["vocab_size"]
    assert float(match[1]) == pytest.approx(math.log(vocab), abs=1.0)  # near-uniform predictions at init
    dim, n_head, depth = (512, 4, 8) if not preset else (128, 2, 2)
    assert float(match[2]) == round(expected_param_count(depth, dim, n_head, vocab) / 1e6, 1)
    assert not crash.exists()


def test_smoke_mode_never_imports_torchdynamo(tmp_path):
    """Nothing compiles in the smoke step: importing TorchDynamo (torch.optim does on its first
    add_param_group) would cost ~2 s of CPU of every experiment's preflight."""
    ws = script_workspace(tmp_path / "ws", preset=True)
    probe = ("import runpy, sys\nsys.argv = ['train.py']\ntry:\n    runpy.run_path('train.py', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\nprint('dynamo imported:', 'torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ws, env=script_env(ws, GITAR_SMOKE="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "smoke: ok" in result.stdout and result.stdout.strip().endswith("dynamo imported: False"), result.stdout


def _set(section, key, value):
    return lambda m: m[section].__setitem__(key, value)


def _rename(section, old, new):
    return lambda m: m[section].__setitem__(new, m[section].pop(old))


@pytest.mark.parametrize("edit,expected", [
    (_rename("architecture", "depth", "detph"), 'model.json: architecture.detph: unknown key; did you mean "depth"'),
    (_set("architecture", "depth", "8"), "architecture.depth: expected an integer"),
    (_set("architecture", "depth", 0), "architecture.depth: must be at least 1"),
    (_set("optimization", "device_batch_size", True), "expected an integer"),
    (lambda m: m.clear(), "missing key architecture"),
    (_set("optimization", "total_batch_size", 1000), "not a multiple of"),
    (_set("optimization", "adam_betas", [0.9, 1.0]), "each beta must be below 1"),
    (_set("optimization", "warmup_ratio", 0.8), "warmup_ratio + warmdown_ratio"),
    (_set("architecture", "window_pattern", "SXL"), "use only S (short) and L"),
    (_set("architecture", "head_dim", 65), "must be even"),
], ids=["typo", "wrong-type", "zero-depth", "bool-as-int", "empty-object", "batch-not-divisible", "betas",
        "schedule", "window-pattern", "odd-head-dim"])
def test_train_py_s_schema_refuses_bad_hyperparameters_in_one_line(edit, expected):
    """model.json's schema is train.py's own: every key checked, one line naming it (exit 2 in the script)."""
    from gitar.config.schema import load_ground
    from gitar.errors import GitarError

    model = json.loads((REPO_ROOT / "model.json").read_text())
    edit(model)
    with pytest.raises(GitarError) as refused:
        train.parse_model(model, Path("model.json"), load_ground(REPO_ROOT / "ground.json"))
    assert expected in refused.value.message and "\n" not in refused.value.message


def test_the_agent_extends_its_own_schema_and_typos_are_still_refused(tmp_path):
    """model.json's schema is train.py's: a new key needs train.py only, never a gitar release."""
    from gitar.loop.preflight import check_model_source

    ws = script_workspace(tmp_path / "ws", preset=True)
    source = (ws / "train.py").read_text()
    declared = source.replace("    window_pattern: str  #", "    mlp_ratio: int\n    window_pattern: str  #", 1)
    declared = declared.replace('        window_pattern=a.get("window_pattern", string()),',
                                '        window_pattern=a.get("window_pattern", string()),\n'
                                '        mlp_ratio=a.get("mlp_ratio", integer(1, 64)),', 1)
    assert declared.count("mlp_ratio") == source.count("mlp_ratio") + 3, "train.py's schema moved: update this test's edit"
    (ws / "train.py").write_text(declared)
    model = json.loads((ws / "model.json").read_text())
    model["architecture"]["mlp_ratio"] = 4
    (ws / "model.json").write_text(json.dumps(model))
    check_model_source((ws / "model.json").read_bytes())  # gitar's own check: a JSON object, nothing more
    result = run_script(ws, GITAR_SMOKE="1")
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1].startswith("smoke: ok"), result.stderr

    model["architecture"]["mlp_ration"] = model["architecture"].pop("mlp_ratio")  # a typo of the new key
    (ws / "model.json").write_text(json.dumps(model))
    result = run_script(ws, GITAR_SMOKE="1")
    assert result.returncode == 2, result.stderr
    assert 'model.json: architecture.mlp_ration: unknown key; did you mean "mlp_ratio"' in result.stderr
    assert "Traceback" not in result.stderr


def test_smoke_mode_fails_with_a_crash_record_on_a_shape_error(tmp_path):
    ws = script_workspace(tmp_path / "ws", preset=True)
    source = (ws / "train.py").read_text()
    broken = source.replace("nn.Linear(4 * config.n_embd, config.n_embd", "nn.Linear(3 * config.n_embd, config.n_embd")
    assert broken != source
    (ws / "train.py").write_text(broken)
    crash = tmp_path / "crash.json"
    result = run_script(ws, GITAR_SMOKE="1", GITAR_CRASH_FILE=str(crash))
    assert result.returncode != 0
    assert "smoke: ok" not in result.stdout
    assert "Traceback" in result.stderr
    record = read_crash(crash)
    assert record["phase"] == "smoke" and record["type"] == "RuntimeError"
    assert "shapes cannot be multiplied" in record["message"]
    assert any("train.py" in line for line in record["traceback"])


def test_smoke_mode_catches_an_optimizer_that_produces_nan(tmp_path):
    ws = script_workspace(tmp_path / "ws", preset=True)
    source = (ws / "train.py").read_text()
    broken = source.replace("    p.mul_(1 - lr * wd)\n", "    p.mul_(1 - lr * wd)\n    p.div_(0.0 * lr)\n")
    assert broken != source
    (ws / "train.py").write_text(broken)
    crash = tmp_path / "crash.json"
    result = run_script(ws, GITAR_SMOKE="1", GITAR_CRASH_FILE=str(crash))
    assert result.returncode == 1
    record = read_crash(crash)
    assert (record["phase"], record["type"]) == ("smoke", "TrainingDiverged")


def test_invalid_model_json_is_one_line_and_exit_2(tmp_path):
    ws = script_workspace(tmp_path / "ws", preset=True)
    obj = cpu_model()
    obj["architecture"]["depth"] = "eight"
    (ws / "model.json").write_text(json.dumps(obj))
    crash = tmp_path / "crash.json"
    result = run_script(ws, GITAR_SMOKE="1", GITAR_CRASH_FILE=str(crash))
    assert result.returncode == 2
    assert result.stderr.strip() == 'model.json: architecture.depth: expected an integer, got "eight" (a string)'
    assert read_crash(crash)["type"] == "GitarError"


@pytest.mark.parametrize("bad", ["model.json", "seed"])
def test_python_train_py_by_hand_refuses_bad_input_in_one_line_too(tmp_path, bad):
    """Without gitar's launcher (`python train.py`, as upstream is run): the same line and exit 2."""
    ws = script_workspace(tmp_path / "ws", preset=True)
    extra = {"GITAR_SMOKE": "1"}
    if bad == "seed":
        extra["GITAR_SEED"] = "forty-two"
    else:
        obj = cpu_model()
        obj["architecture"]["depth"] = "eight"
        (ws / "model.json").write_text(json.dumps(obj))
    result = subprocess.run([sys.executable, "train.py"], cwd=ws, env=script_env(ws, **extra),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    want = ('model.json: architecture.depth: expected an integer, got "eight" (a string)' if bad == "model.json"
            else "GITAR_SEED: expected a non-negative integer, got 'forty-two'; set e.g. GITAR_SEED=42 or unset it")
    assert result.stderr.strip() == want


def test_bad_seed_is_one_line_and_exit_2(tmp_path):
    ws = script_workspace(tmp_path / "ws", preset=True)
    result = run_script(ws, GITAR_SMOKE="1", GITAR_SEED="forty-two")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("GITAR_SEED: expected a non-negative integer, got 'forty-two'")
    assert "Traceback" not in result.stderr


def test_smoke_step_is_seeded(capsys):
    cfg = model_cfg()

    def smoke_line(seed: int) -> str:
        train.smoke_step(cfg, 512, 64, seed)
        return capsys.readouterr().out.strip().splitlines()[-1]

    first, again, other = smoke_line(7), smoke_line(7), smoke_line(8)
    assert first.startswith("smoke: ok loss=") and first == again and first != other


def test_crash_record_is_written_atomically_and_names_phase_and_step(tmp_path, monkeypatch):
    crash = tmp_path / "records" / "crash.json"
    crash.parent.mkdir()
    monkeypatch.setenv("GITAR_CRASH_FILE", str(crash))
    try:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except torch.OutOfMemoryError as e:
        write_crash_record(e, "train", 17)
    record = read_crash(crash)
    assert record["type"] == "OutOfMemoryError" and record["phase"] == "train" and record["step"] == 17
    assert record["message"].startswith("CUDA out of memory")
    assert list(crash.parent.iterdir()) == [crash]  # no temporary file left behind


# ---------------------------------------------------------------------------
# The real run: the tiny CPU preset trained by the real train.py on prepared data
# ---------------------------------------------------------------------------

TEST_BUDGET_S = 8  # seconds of counted training: enough for the tiny model to learn visibly


@pytest.fixture(scope="module")
def short_workspace(prepared_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared CPU workspace with a short time budget, copied so other tests keep theirs."""
    ws = tmp_path_factory.mktemp("train-run") / "ws"
    shutil.copytree(prepared_workspace, ws, symlinks=True)
    ground = json.loads((ws / "ground.json").read_text())
    ground["training"]["time_budget_s"]["cpu"] = TEST_BUDGET_S
    (ws / "ground.json").write_text(json.dumps(ground, indent=2))
    return ws


UNTRAINED_BPB = """
import torch, train
from prepare import GROUND, MAX_SEQ_LEN, PLATFORM, Tokenizer, evaluate_bpb
cfg = train.load_model(train.MODEL_JSON, ground=GROUND)
tokenizer = Tokenizer.from_directory()
torch.manual_seed(train.read_seed())
config = train.gpt_config(cfg.architecture, tokenizer.get_vocab_size(), MAX_SEQ_LEN, PLATFORM.attention)
model = train.build_model(config, torch.device(PLATFORM.device))
model.eval()
with torch.no_grad():
    print(evaluate_bpb(model, tokenizer, cfg.evaluation.batch_size))
"""


def parse_summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert "---" in lines, stdout[-2000:]
    block = lines[lines.index("---") + 1:]
    pairs = [line.split(": ", 1) for line in block]
    assert [k for k, _ in pairs] == SUMMARY_KEYS, block
    return dict(pairs)


@pytest.mark.slow
def test_real_cpu_run_learns_and_prints_the_contract(short_workspace, tmp_path):
    crash = tmp_path / "crash.json"
    result = run_script(short_workspace, GITAR_CRASH_FILE=str(crash), GITAR_SEED="3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not crash.exists()

    step_lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert step_lines and all(STEP_LINE.match(line) for line in step_lines), step_lines[:3]
    last = STEP_LINE.match(step_lines[-1])
    assert float(last[9]) == TEST_BUDGET_S and float(last[8]) >= TEST_BUDGET_S

    summary = parse_summary(result.stdout)
    print("summary:", summary)  # figures for the report (pytest -s)
    assert int(summary["num_steps"]) == len(step_lines) > train.EXCLUDED_STEPS
    assert float(summary["training_seconds"]) >= TEST_BUDGET_S
    assert float(summary["total_seconds"]) > float(summary["training_seconds"])
    assert (summary["device"], summary["dtype"], summary["attention"], summary["seed"]) == (
        "cpu", "float32", "sdpa", "3")
    assert summary["peak_vram_mb"] == "0.0" and summary["mfu_percent"] == "0.00"
    assert summary["depth"] == "2"
    val_bpb = float(summary["val_bpb"])
    assert math.isfinite(val_bpb)

    untrained = subprocess.run([sys.executable, "-c", UNTRAINED_BPB], cwd=short_workspace,
                               env=script_env(short_workspace, GITAR_SEED="3"),
                               capture_output=True, text=True, timeout=300)
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    untrained_bpb = float(untrained.stdout.strip().splitlines()[-1])
    print(f"val_bpb trained {val_bpb:.4f} vs untrained {untrained_bpb:.4f}")
    assert val_bpb < untrained_bpb - 0.2


@pytest.mark.slow
def test_diverging_run_fails_fast_with_a_crash_record(short_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(short_workspace, ws, symlinks=True)
    obj = json.loads((ws / "model.json").read_text())
    obj["optimization"].update(embedding_lr=1e38, unembedding_lr=1e38, matrix_lr=1e38, scalar_lr=1e38)
    (ws / "model.json").write_text(json.dumps(obj))
    crash = tmp_path / "crash.json"
    result = run_script(ws, GITAR_CRASH_FILE=str(crash))
    assert result.returncode == 1
    assert "---" not in result.stdout.splitlines()  # no summary: the run never reached evaluation
    record = read_crash(crash)
    assert (record["type"], record["phase"]) == ("TrainingDiverged", "train")
    assert record["step"] <= train.EXCLUDED_STEPS  # stopped within the first steps, not after the budget
    assert "TrainingDiverged" in result.stderr
