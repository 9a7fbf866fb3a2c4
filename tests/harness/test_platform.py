"""gitar/runtime/platform.py: the choices for each GPU generation, CPU and Mac, and the overrides."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from gitar.config.schema import ProcessorConfig
from gitar.runtime import platform
from gitar.runtime.platform import (
    DeviceProbe,
    Platform,
    detect_platform,
    load_flash_attention_3,
    probe_device,
)

AUTO = ProcessorConfig(device="auto", dtype="auto", attention="auto", compile=None, peak_flops=None)


def gpu(name: str, capability: tuple[int, int], sms: int, mhz: float, *, fa3: bool = False,
        triton: bool = True, os: str = "linux") -> DeviceProbe:
    return DeviceProbe(cuda=True, device_name=name, capability=capability, sm_count=sms, clock_mhz=mhz,
                       os=os, triton=triton, fa3=fa3)


CPU = DeviceProbe(cuda=False, os="linux", triton=True)
MAC = DeviceProbe(cuda=False, mps=True, os="darwin", triton=False)

# (probe, dtype, grad scaler, attention, compile, peak TFLOP/s from SMs x clock x table). Attention:
# FA3 wherever a build for the GPU is at hand (Ampere and later, as upstream), else FlexAttention
# wherever Triton compiles it; the dense mask only where neither can run.
GENERATIONS = {
    "volta V100": (gpu("Tesla V100-SXM2-16GB", (7, 0), 80, 1530), "float16", True, "sdpa", True, 125.3),
    "turing T4": (gpu("Tesla T4", (7, 5), 40, 1590), "float16", True, "sdpa", True, 65.1),
    "ampere A100": (gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1410), "bfloat16", False, "flex", True, 311.9),
    "ampere A100 with FA3": (gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1410, fa3=True), "bfloat16", False, "fa3",
                             True, 311.9),
    "ampere RTX 3090": (gpu("NVIDIA GeForce RTX 3090", (8, 6), 82, 1695), "bfloat16", False, "flex", True, 142.3),
    "ada L40": (gpu("NVIDIA L40", (8, 9), 142, 2490), "bfloat16", False, "flex", True, 362.1),
    "hopper with FA3": (gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 1830, fa3=True), "bfloat16", False, "fa3", True, 989.4),
    "hopper without FA3": (gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 1830), "bfloat16", False, "flex", True, 989.4),
    "blackwell B200": (gpu("NVIDIA B200", (10, 0), 148, 1855, fa3=True), "bfloat16", False, "fa3", True, 2249.0),
    "blackwell RTX 5090": (gpu("NVIDIA GeForce RTX 5090", (12, 0), 170, 2407), "bfloat16", False, "flex", True, 419.0),
    "windows without triton": (gpu("NVIDIA GeForce RTX 4090", (8, 9), 128, 2520, triton=False, os="win32"),
                               "bfloat16", False, "sdpa", False, 330.3),
    "windows with triton": (gpu("NVIDIA GeForce RTX 4090", (8, 9), 128, 2520, os="win32"),
                            "bfloat16", False, "flex", False, 330.3),
}


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_automatic_choices_per_gpu_generation(generation: str) -> None:
    probe, dtype, scaler, attention, compile_, tflops = GENERATIONS[generation]
    p = detect_platform(AUTO, probe)
    assert (p.device, p.dtype, p.use_grad_scaler, p.attention, p.compile) == ("cuda", dtype, scaler, attention, compile_)
    assert p.fp32_optimizer_state == (dtype == "float16")
    assert p.peak_flops == pytest.approx(tflops * 1e12, rel=1e-3)
    assert p.capability == probe.capability
    if attention == "fa3":
        assert p.warnings == ()
    else:  # a step down from upstream's FA3 is said, in one line
        assert len(p.warnings) == 1 and p.warnings[0].startswith("attention: ") and "\n" not in p.warnings[0]
        assert ("using FlexAttention" if attention == "flex" else "dense [T, T] mask") in p.warnings[0]
        assert ("sm80 or later" if probe.capability < (8, 0) else "pip install -e '.[fa3]'") in p.warnings[0]


def test_never_a_dense_mask_on_a_gpu_that_can_compile() -> None:
    for name, (probe, *_rest) in GENERATIONS.items():
        if probe.triton and probe.capability is not None and probe.capability >= (8, 0):
            assert detect_platform(AUTO, probe).attention in ("fa3", "flex"), name


def test_h100_peak_matches_the_datasheet() -> None:
    # NVIDIA: H100 SXM5, 989.4 dense bf16 TFLOP/s at its 1830 MHz tensor boost clock.
    p = detect_platform(AUTO, gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 1830))
    assert p.peak_flops == pytest.approx(989.4e12, rel=1e-3)


def test_cpu_is_float32_eager_without_peak() -> None:
    p = detect_platform(AUTO, CPU)
    assert (p.device, p.dtype, p.attention, p.compile, p.peak_flops) == ("cpu", "float32", "sdpa", False, None)
    assert not p.use_grad_scaler and not p.fp32_optimizer_state
    assert p.torch_dtype is torch.float32
    assert p.describe() == "cpu float32 sdpa eager"
    assert p.warnings == ()


def test_mac_uses_mps_simply() -> None:
    p = detect_platform(AUTO, MAC)
    assert (p.device, p.dtype, p.attention, p.compile, p.peak_flops) == ("mps", "float32", "sdpa", False, None)


def test_pre_volta_gpu_uses_float32() -> None:
    p = detect_platform(AUTO, gpu("Tesla P100-PCIE-16GB", (6, 0), 56, 1329))
    assert (p.dtype, p.use_grad_scaler, p.peak_flops) == ("float32", False, None)


def test_unknown_architecture_warns_about_mfu_once() -> None:
    p = detect_platform(AUTO, gpu("Future GPU", (11, 0), 100, 2000, fa3=True))
    assert p.peak_flops is None
    assert len(p.warnings) == 1 and "processor.peak_flops" in p.warnings[0] and "sm110" in p.warnings[0]


def test_unknown_clock_warns_about_mfu_once() -> None:
    p = detect_platform(AUTO, dataclasses.replace(gpu("NVIDIA A100", (8, 0), 108, 0, fa3=True), clock_mhz=None))
    assert p.peak_flops is None
    assert len(p.warnings) == 1 and "clock" in p.warnings[0]


def test_describe_names_gpu_capability_and_choices() -> None:
    h100 = detect_platform(AUTO, gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 1980, fa3=True))
    assert h100.describe() == "cuda NVIDIA H100 80GB HBM3 sm90 bfloat16 fa3 compile"
    t4 = detect_platform(AUTO, gpu("Tesla T4", (7, 5), 40, 1590, triton=False))
    assert t4.describe() == "cuda Tesla T4 sm75 float16 sdpa eager grad-scaler"
    a100 = detect_platform(AUTO, gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1410))
    assert a100.describe() == "cuda NVIDIA A100-SXM4-80GB sm80 bfloat16 flex compile"
    assert t4.torch_dtype is torch.float16


def test_platform_is_frozen() -> None:
    p = detect_platform(AUTO, CPU)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.dtype = "bfloat16"  # type: ignore[misc]


# ---------------------------------------------------------------------------
# ground.json overrides
# ---------------------------------------------------------------------------


def override(**kwargs: object) -> ProcessorConfig:
    return dataclasses.replace(AUTO, **kwargs)  # type: ignore[arg-type]


A100 = GENERATIONS["ampere A100"][0]
T4 = GENERATIONS["turing T4"][0]
H100_NO_FA3 = GENERATIONS["hopper without FA3"][0]


def test_overrides_that_the_machine_supports_apply_silently() -> None:
    p = detect_platform(override(dtype="float16", attention="flex", compile=False, peak_flops=1e14), A100)
    assert (p.dtype, p.use_grad_scaler, p.fp32_optimizer_state, p.attention, p.compile, p.peak_flops) == (
        "float16", True, True, "flex", False, 1e14)
    assert p.warnings == ()
    assert detect_platform(override(dtype="float32"), A100).dtype == "float32"
    assert detect_platform(override(dtype="bfloat16"), CPU).dtype == "bfloat16"  # CPU autocast has bf16
    assert detect_platform(override(compile=True), CPU).compile is True


def test_cpu_device_on_a_gpu_machine() -> None:
    p = detect_platform(override(device="cpu"), A100)
    assert (p.device, p.capability, p.dtype, p.compile, p.peak_flops) == ("cpu", None, "float32", False, None)
    assert p.warnings == ()


@pytest.mark.parametrize(("processor", "probe", "field", "fallback", "words"), [
    (override(device="cuda"), CPU, "device", "cpu", "processor.device: cuda is not available"),
    (override(device="mps"), CPU, "device", "cpu", "processor.device: mps"),
    (override(dtype="bfloat16"), T4, "dtype", "float16", "processor.dtype: bfloat16 is not supported on this sm75"),
    (override(dtype="float16"), CPU, "dtype", "float32", "processor.dtype: float16"),
    (override(dtype="bfloat16"), MAC, "dtype", "float32", "processor.dtype: bfloat16"),
    (override(attention="fa3"), A100, "attention", "flex", "neither installed"),
    (override(attention="fa3"), T4, "attention", "sdpa", "FA3 needs sm80 or later, not this sm75 GPU"),
    (override(attention="flex"), T4, "attention", "sdpa", "FlexAttention's compiled kernels need sm80 or later"),
    (override(attention="fa3"), CPU, "attention", "sdpa", "FA3 needs a CUDA GPU"),
    (override(attention="fa3"), H100_NO_FA3, "attention", "flex", "neither installed"),
    (override(attention="fa3"), dataclasses.replace(A100, triton=False), "attention", "sdpa", "dense [T, T] mask"),
    (override(attention="flex"), dataclasses.replace(A100, triton=False), "attention", "sdpa", "needs triton"),
    (override(attention="sdpa"), A100, "attention", "sdpa", "dense [T, T] mask"),
    (override(compile=True), dataclasses.replace(A100, triton=False), "compile", False, "needs triton"),
])
def test_unavailable_request_falls_back_with_one_warning(processor: ProcessorConfig, probe: DeviceProbe,
                                                         field: str, fallback: object, words: str) -> None:
    p = detect_platform(processor, probe)
    assert getattr(p, field) == fallback
    # Besides the line of the automatic attention choice on a GPU without FA3 (tested above).
    said = p.warnings if field == "attention" else tuple(w for w in p.warnings if not w.startswith("attention: "))
    assert len(said) == 1
    assert words in said[0]
    assert "\n" not in said[0]


def test_fa3_request_on_hopper_with_fa3() -> None:
    p = detect_platform(override(attention="fa3"), GENERATIONS["hopper with FA3"][0])
    assert p.attention == "fa3" and p.warnings == ()


# ---------------------------------------------------------------------------
# Probing this machine, finding FA3
# ---------------------------------------------------------------------------


def test_probe_reads_this_machine() -> None:
    probe = probe_device()
    assert probe.cuda == torch.cuda.is_available()
    assert probe.os == sys.platform
    assert probe.triton == (importlib.util.find_spec("triton") is not None)
    p = detect_platform(AUTO, probe)
    assert isinstance(p, Platform)
    assert p.device == ("cuda" if probe.cuda else "mps" if probe.mps else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_reads_the_gpu() -> None:
    probe = probe_device()
    assert probe.capability == torch.cuda.get_device_capability()
    assert probe.sm_count == torch.cuda.get_device_properties(0).multi_processor_count
    assert probe.clock_mhz is not None and 300 < probe.clock_mhz < 4000
    p = detect_platform(AUTO, probe)
    assert p.device == "cuda"
    if probe.capability in platform.FLOPS_PER_CLOCK_PER_SM:
        assert p.peak_flops is not None and p.peak_flops > 1e13


def test_fa3_from_a_source_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flash_attn_interface.py").write_text("def flash_attn_func(q, k, v, causal=False):\n    return q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)
    module = load_flash_attention_3()
    assert module is not None and callable(module.flash_attn_func)
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)


def test_no_fa3_without_a_build_or_a_cached_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn_interface" else real_find_spec(name, *a))
    assert load_flash_attention_3() is None


def test_kernels_cache_is_found_only_where_a_snapshot_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "kernels" else real_find_spec(name, *a))
    assert not platform._fa3_in_kernels_cache()
    (tmp_path / "models--varunneal--flash-attention-3" / "snapshots").mkdir(parents=True)
    assert platform._fa3_in_kernels_cache()
    # varunneal's build is Hopper's only: other GPUs need the kernels-community one, as upstream loads it.
    assert platform._fa3_in_kernels_cache((9, 0)) and not platform._fa3_in_kernels_cache((8, 0))
    data_cache = tmp_path / "data-cache-kernels"
    (data_cache / "kernels--kernels-community--flash-attn3" / "snapshots").mkdir(parents=True)
    assert platform._fa3_in_kernels_cache((8, 0), data_cache) and platform._fa3_cache((12, 0), data_cache) == data_cache


def test_fa3_builds_per_gpu_as_upstream_picks_them() -> None:
    assert platform.fa3_repos((9, 0)) == ("varunneal/flash-attention-3", "kernels-community/flash-attn3")
    assert platform.fa3_repos((8, 0)) == platform.fa3_repos((10, 0)) == ("kernels-community/flash-attn3",)
    assert platform.fa3_repos((7, 5)) == platform.fa3_repos(None) == ()


def test_fetching_fa3_without_kernels_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kernels" else real_find_spec(name, *a))
    line = platform.fetch_flash_attention_3((9, 0), tmp_path / "kernels")
    assert "`kernels` is not installed" in line and "FlexAttention" in line and "\n" not in line
    assert "no FA3 build" in platform.fetch_flash_attention_3((7, 5), tmp_path / "kernels")
