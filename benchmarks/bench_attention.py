"""The export's sliding-window attention: blocks of queries (gitar/runtime/attention.py) beside the
dense [T, T] mask it replaced, on the CPU, side by side.

    python benchmarks/bench_attention.py [--runs 7] [--threads N] [--skip-model] [--json]

1. attention alone, forward, at B=4, T=2048, H=Hkv=6, D=128, window (1024, 0) (the shipped model's
   short layers): median seconds over --runs alternating calls, and the peak memory one call adds
   (resident memory sampled every millisecond in a fresh process per variant: the CPU allocator
   keeps no statistics);
2. the same, forward and backward (CPU training runs the sdpa backend: the blocks now);
3. the CPU preset's model (gitar/demo/presets.py) exported both ways and run as the harness runs
   it (evaluator.ExportedModel, batch = the preset's evaluation batch): median seconds per forward.
Medians of alternating runs, so load that drifts hits both variants alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gitar.runtime import attention as attn  # noqa: E402

B, T, H, HKV, D, LEFT = 4, 2048, 6, 6, 128, 1024


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None,
                    causal: bool = False, window_size: tuple[int, int] = (-1, -1), **_: Any) -> torch.Tensor:
    """What the export ran before: one SDPA call with a dense [T_q, T_k] boolean mask."""
    t_q, t_k = q.size(1), k.size(1)
    left, right = window_size
    if causal:
        right = 0
    i = torch.arange(t_q, device=q.device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=q.device)[None, :]
    allowed = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)
    if left >= 0:
        allowed = allowed & (j >= i - left)
    if right >= 0:
        allowed = allowed & (j <= i + right)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if kh.size(1) != qh.size(1):
        kh = kh.repeat_interleave(qh.size(1) // kh.size(1), dim=1)
        vh = vh.repeat_interleave(qh.size(1) // vh.size(1), dim=1)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=softmax_scale).transpose(1, 2)


VARIANTS: dict[str, Callable[..., torch.Tensor]] = {"dense": dense_attention, "blocks": attn.sliding_window_attention}


def inputs(grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (H, HKV, HKV))
    return (q.requires_grad_(), k.requires_grad_(), v.requires_grad_()) if grad else (q, k, v)


def one_call(name: str, backward: bool, qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    fn = VARIANTS[name]
    q, k, v = qkv
    if backward:
        fn(q, k, v, causal=True, window_size=(LEFT, 0)).sum().backward()
    else:
        with torch.no_grad():
            fn(q, k, v, causal=True, window_size=(LEFT, 0))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_peak(name: str, backward: bool) -> float:
    """MiB that one call adds to this process's resident memory at its highest, sampled every
    millisecond (kernel workspaces included, which tensor accounting would miss)."""
    qkv = inputs(grad=backward)
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        one_call(name, backward, qkv)
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], rss_bytes()) - base) / 2**20


def peak_mib(name: str, backward: bool) -> float:
    """measure_peak in a fresh process: nothing another variant freed is there to reuse."""
    here = str(Path(__file__).parent)
    code = (f"import sys; sys.path.insert(0, {here!r}); import bench_attention as b; "
            f"print(b.measure_peak({name!r}, {backward!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    for fn in calls.values():  # warm-up: kernels chosen, pages touched
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


@contextmanager
def exported_with(fn: Callable[..., torch.Tensor]) -> Iterator[None]:
    """The export's attention swapped for `fn` (the launcher's exports call it through this name)."""
    real = attn.sliding_window_attention
    attn.sliding_window_attention = fn
    try:
        yield
    finally:
        attn.sliding_window_attention = real


def model_forwards(runs: int) -> tuple[dict[str, float], str]:
    import train
    from gitar.demo.presets import cpu_ground, cpu_model
    from gitar.loop import evaluator
    from gitar.runtime import launch

    ground = cpu_ground(json.loads((ROOT / "ground.json").read_text()))
    seq_len, vocab = int(ground["training"]["max_seq_len"]), int(ground["tokenizer"]["vocab_size"])
    cfg = train.parse_model(cpu_model(), Path("model.json"))
    batch = cfg.evaluation.batch_size
    torch.manual_seed(0)
    model = train.build_model(train.gpt_config(cfg.architecture, vocab, seq_len, "sdpa"), torch.device("cpu")).eval()
    programs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in VARIANTS.items():
            path = Path(tmp) / f"{name}.pt2"
            with exported_with(fn):
                launch.export_model(model, path, batch, seq_len)
            programs[name] = evaluator.ExportedModel(evaluator.load_program(path.read_bytes(), path.name))
    x = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same = torch.allclose(programs["dense"](x), programs["blocks"](x), atol=1e-5, rtol=1e-5)

        def forward(p: torch.nn.Module) -> Callable[[], object]:
            return lambda: p(x)

        medians = alternate({name: forward(p) for name, p in programs.items()}, runs)
    what = (f"CPU preset: depth {cfg.architecture.depth}, T {seq_len}, window pattern "
            f"{cfg.architecture.window_pattern}, batch {batch}; logits equal: {same}")
    return medians, what


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="alternating runs per variant (default 7)")
    ap.add_argument("--skip-model", action="store_true", help="only the attention alone")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    ap.add_argument("--threads", type=int, help="torch threads (default torch's); on a shared machine 1 measures "
                    "the work, more also how each call's thread hand-offs fare against the other load")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the peak-memory processes run with the same
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "load": os.getloadavg()[0], "runs": args.runs,
                              "shape": f"B={B} T={T} H={H} Hkv={HKV} D={D} window=({LEFT}, 0)"}
    q, k, v = inputs()
    with torch.no_grad():
        diff = (dense_attention(q, k, v, causal=True, window_size=(LEFT, 0))
                - attn.sliding_window_attention(q, k, v, causal=True, window_size=(LEFT, 0))).abs().max().item()
    result["max_abs_diff"] = diff

    def forward(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return fn(q, k, v, causal=True, window_size=(LEFT, 0))
        return call

    result["forward_s"] = alternate({n: forward(fn) for n, fn in VARIANTS.items()}, args.runs)
    qg, kg, vg = inputs(grad=True)

    def backward(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def call() -> object:
            fn(qg, kg, vg, causal=True, window_size=(LEFT, 0)).sum().backward()
            return None
        return call

    result["forward_backward_s"] = alternate({n: backward(fn) for n, fn in VARIANTS.items()}, max(3, args.runs // 2))
    result["peak_mib"] = {n: peak_mib(n, False) for n in VARIANTS}
    result["peak_mib_backward"] = {n: peak_mib(n, True) for n in VARIANTS}
    if not args.skip_model:
        result["model_forward_s"], result["model"] = model_forwards(args.runs)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"attention, {result['shape']}; {result['threads']} threads, load {result['load']:.1f} -> "
          f"{result['load_after']:.1f}; medians of {args.runs} alternating runs; max |dense - blocks| {diff:.2e}")
    rows = [("forward (s)", "forward_s"), ("forward + backward (s)", "forward_backward_s"),
            ("peak added, forward (MiB)", "peak_mib"), ("peak added, fwd + bwd (MiB)", "peak_mib_backward")]
    if "model_forward_s" in result:
        rows.append(("exported model forward (s)", "model_forward_s"))
    print(f"{'':30s} {'dense mask':>12s} {'blocks':>12s} {'ratio':>8s}")
    for label, key in rows:
        d, b = result[key]["dense"], result[key]["blocks"]
        print(f"{label:30s} {d:12.4f} {b:12.4f} {b / d if d else float('nan'):8.2f}")
    if "model" in result:
        print(result["model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
