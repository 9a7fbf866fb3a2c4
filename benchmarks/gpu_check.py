"""A machine with one GPU, checked in minutes: platform, every attention backend, MFU, export and harness evaluation.

    python benchmarks/gpu_check.py [--budget-s 15] [--backends fa3,flex,sdpa] [--keep DIR] [--tiny]

Offline (the embedded corpus, prepared with `prepare.py --source`), in a scratch workspace:
1. platform detection: CUDA, the device, its compute capability, bf16, Triton, FA3, and the
   peak dense bf16 FLOP/s from the table below (upstream's MFU divides by 989.5e12, the H100
   SXM's) beside gitar's own estimate (SMs x clock);
2. per attention backend this machine offers, a short run of the real model (the shipped
   model.json, torch.compile where the platform uses it) with train.py run directly, which
   evaluates in-process: tokens/s of the timed steps and MFU against the table's peak, beside
   upstream's 39.8 % on an H100;
3. the export's attention alone: its sliding-window layer in blocks of queries (what the harness
   evaluation runs) beside the dense [T, T] mask it replaced and full causal attention, CUDA only;
4. the default backend through gitar itself (`gitar init`, `gitar run`): training in the
   sandbox, the torch.export of the model and the harness evaluation in a sandbox of its own,
   with the record's timings.
It prints one table and exits 1 if anything that should have run failed. On a machine
without CUDA, what needs CUDA is reported as skipped, and the rest (platform detection, an SDPA
run on the CPU, export and evaluation) runs: `--tiny` is the configuration the test suite
uses (tests/bench/test_gpu_check.py) so CI proves this script does not rot.

Attention backends are selected through ground.json `processor.attention`, the switch train.py
reads (via prepare.PLATFORM): "fa3", "flex" and "sdpa". A train.py or gitar that does not know a
backend refuses its ground.json in one line; the row then says so instead of failing the check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gitar import shared  # noqa: E402
from gitar.commands.demo import build_workspace  # noqa: E402
from gitar.config.schema import ProcessorConfig, read_json_object  # noqa: E402
from gitar.demo import corpus  # noqa: E402
from gitar.errors import GitarError  # noqa: E402
from gitar.host import sandbox  # noqa: E402
from gitar.runtime.platform import FLEX_MIN_CAPABILITY, detect_platform, fa3_repos, probe_device  # noqa: E402

UPSTREAM_MFU_H100 = 39.8  # upstream autoresearch's README, 5-minute run on an H100 SXM
# Peak dense bf16 tensor FLOP/s (no sparsity) by device name, as the vendors' datasheets give
# them; the first pattern that matches the name wins. Upstream hard-codes the H100 SXM's.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.5e12), ("H200", 989.5e12), ("GH200", 989.5e12),
    ("H800", 989.5e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12), ("B200", 2250e12), ("B100", 1750e12),
    ("RTX 4090", 165e12), ("RTX 5090", 209e12),
)
BACKENDS = ("fa3", "flex", "sdpa")
RUN_TIMEOUT_S = 240.0  # one backend's run, compile included: the whole check must stay under 8 minutes

# --tiny: what the test suite runs on a CPU in seconds (the model is too small to learn anything).
TINY_GROUND = {("training", "max_seq_len"): 64, ("training", "eval_tokens"): 512}
TINY_MODEL = {
    "architecture": {"depth": 1, "aspect_ratio": 64, "head_dim": 64, "window_pattern": "L"},
    "optimization": {"total_batch_size": 256, "device_batch_size": 4},
    "evaluation": {"batch_size": 4},
}
TINY_CORPUS_DOCS = 600


def peak_flops_for(name: str | None) -> float | None:
    if not name:
        return None
    return next((flops for pattern, flops in PEAK_BF16_FLOPS if pattern.lower() in name.lower()), None)


def flex_importable() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@dataclass
class Row:
    check: str
    status: str  # ok | skipped | unsupported | FAILED
    tok_s: float | None = None
    mfu: float | None = None  # against the table's peak, percent
    mfu_train: float | None = None  # train.py's own figure (gitar's peak estimate), percent
    val_bpb: float | None = None
    seconds: float | None = None
    note: str = ""


def backend_availability(probe: Any) -> dict[str, str | None]:
    """Per backend, None if this machine can run it, else why not."""
    why: dict[str, str | None] = {"sdpa": None}
    if not probe.cuda:
        why["fa3"] = why["flex"] = "needs CUDA"
        return why
    sm = f"sm{probe.capability[0]}{probe.capability[1]}" if probe.capability else "an unknown GPU"
    if not fa3_repos(probe.capability):
        why["fa3"] = f"no FA3 build for {sm} (Hopper's, or kernels-community's from Ampere on)"
    elif not probe.fa3:
        why["fa3"] = "FA3 neither installed (flash_attn_interface) nor in the local kernels cache"
    else:
        why["fa3"] = None
    if probe.capability is None or probe.capability < FLEX_MIN_CAPABILITY:
        why["flex"] = f"FlexAttention's compiled kernels need sm80 or newer, this is {sm}"
    else:
        why["flex"] = None if flex_importable() and probe.triton else "needs torch.nn.attention.flex_attention and Triton"
    return why


# ---------------------------------------------------------------------------
# Reading a run (pure: tests/bench/test_gpu_check.py checks them)
# ---------------------------------------------------------------------------

STEP = re.compile(r"^step (\d+) \| .*\| dt (\d+)ms \|")
EXCLUDED_STEPS = 10  # train.py's untimed warm-up steps (compilation): 0..10


def read_run(log: str, total_batch_size: int) -> dict[str, float]:
    """tokens/s over the timed steps (median step time), FLOPs per token, and the summary's numbers."""
    dts = [int(m.group(2)) / 1000 for line in log.splitlines()
           if (m := STEP.match(line)) and int(m.group(1)) > EXCLUDED_STEPS]
    out: dict[str, float] = {}
    if dts:
        out["tok_s"] = total_batch_size / statistics.median(dts)
    m = re.search(r"^Estimated FLOPs per token: ([\d.e+-]+)$", log, re.M)
    if m:
        out["flops_per_token"] = float(m.group(1))
    for key in ("val_bpb", "mfu_percent", "training_seconds", "total_seconds"):
        found = re.search(rf"^{key}: ([\d.]+)$", log, re.M)
        if found:
            out[key] = float(found.group(1))
    return out


def mfu_percent(tok_s: float, flops_per_token: float, peak: float | None) -> float | None:
    return 100 * tok_s * flops_per_token / peak if peak else None


def render(rows: Sequence[Row], title: str) -> str:
    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    lines = [title, f"{'check':22s} {'status':11s} {'tok/s':>11s} {'MFU %':>6s} {'(train)':>7s} {'val_bpb':>8s} "
                    f"{'s':>6s}  note"]
    for r in rows:
        lines.append(f"{r.check:22s} {r.status:11s} {num(r.tok_s, ',.0f'):>11s} {num(r.mfu, '.1f'):>6s} "
                     f"{num(r.mfu_train, '.1f'):>7s} {num(r.val_bpb, '.4f'):>8s} {num(r.seconds, '.1f'):>6s}  {r.note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The export's attention on the GPU (gitar/runtime/attention.py)
# ---------------------------------------------------------------------------

ATTENTION_REPEATS = 20  # timed calls per variant, after a warm-up call each


def cuda_ms(fn: Any, repeats: int = ATTENTION_REPEATS) -> float:
    """Median milliseconds of fn() by CUDA events, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def export_attention_row(probe: Any) -> Row:
    """The harness evaluation's short-window layer as the export runs it (blocks of queries, the
    fused kernels SDPA picks for them) beside the dense [T, T] mask it replaced and, as the floor,
    full causal attention (what an L layer costs): the shipped model's heads at its eval shape."""
    if not probe.cuda:
        return Row("export attention", "skipped", note="needs CUDA")
    from benchmarks.bench_attention import dense_attention
    from gitar.runtime.attention import sliding_window_attention

    model = read_json_object(ROOT / "model.json")["architecture"]
    seq_len = int(read_json_object(ROOT / "ground.json")["training"]["max_seq_len"])
    head_dim = int(model["head_dim"])
    heads = -(-int(model["depth"]) * int(model["aspect_ratio"]) // head_dim)
    batch, left = 32, seq_len // 2
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    t0 = time.time()
    with torch.no_grad():
        blocks = sliding_window_attention(q, k, v, causal=True, window_size=(left, 0))
        dense = dense_attention(q, k, v, causal=True, window_size=(left, 0))
        diff = (blocks.float() - dense.float()).abs().max().item()
        ms = {"blocks": cuda_ms(lambda: sliding_window_attention(q, k, v, causal=True, window_size=(left, 0))),
              "dense": cuda_ms(lambda: dense_attention(q, k, v, causal=True, window_size=(left, 0))),
              "causal": cuda_ms(lambda: sliding_window_attention(q, k, v, causal=True))}
    note = (f"B={batch} T={seq_len} H={heads} D={head_dim} window ({left}, 0) bf16 fwd: blocks {ms['blocks']:.2f} ms, "
            f"dense mask {ms['dense']:.2f} ms ({ms['dense'] / ms['blocks']:.2f}x), full causal {ms['causal']:.2f} ms; "
            f"max |diff| {diff:.1e}")
    return Row("export attention", "ok" if diff < 5e-2 else "FAILED", seconds=time.time() - t0, note=note)


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------


class Check:
    def __init__(self, root: Path, *, tiny: bool, budget_s: float) -> None:
        self.root, self.tiny, self.budget_s = root, tiny, budget_s
        self.env = shared.environment(prefixes=("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX", "GITAR_"))
        self.env.update({"GIT_AUTHOR_NAME": "gpu check", "GIT_AUTHOR_EMAIL": "check@gitar.invalid",
                         "GIT_COMMITTER_NAME": "gpu check", "GIT_COMMITTER_EMAIL": "check@gitar.invalid",
                         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})

    def sh(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=self.root, env=self.env, text=True, capture_output=True, timeout=timeout)

    def build(self, unconfined: bool) -> None:
        build_workspace(self.root, unconfined=unconfined)
        ground = read_json_object(self.root / "ground.json")
        model = read_json_object(ROOT / "model.json")  # the shipped model: what MFU is about
        training = ground["training"]
        if self.tiny:
            for (section, key), value in TINY_GROUND.items():
                ground[section][key] = value
            for section, values in TINY_MODEL.items():
                model[section].update(values)
        else:
            # The GPU's own settings, a short budget, and an evaluation the small corpus can feed.
            shipped = read_json_object(ROOT / "ground.json")
            training.update(max_seq_len=shipped["training"]["max_seq_len"], eval_tokens=2 * 32 * 2048)
            ground["tokenizer"]["vocab_size"] = shipped["tokenizer"]["vocab_size"]
            model["evaluation"]["batch_size"] = 32
        training["mode"] = "test"  # the mode whose budget this check sets: a run ends after budget_s
        training["time_budget_s"]["test"] = self.budget_s
        # Compilation, start-up and the export take the allowance; the hard timeout covers the evaluation too.
        training["allowance_s"]["test"] = RUN_TIMEOUT_S
        ground["experiment"]["timeout_s"] = int(2 * RUN_TIMEOUT_S)
        (self.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
        (self.root / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        self.total_batch_size = int(model["optimization"]["total_batch_size"])
        corpus.write_corpus(self.root / "corpus", max_docs=TINY_CORPUS_DOCS if self.tiny else None)
        proc = self.sh(sys.executable, "prepare.py", "--source", "corpus")
        if proc.returncode != 0:
            raise GitarError(f"prepare.py --source failed: {(proc.stdout + proc.stderr).strip()[-1000:]}")

    def set_attention(self, backend: str) -> None:
        ground = read_json_object(self.root / "ground.json")
        ground["processor"]["attention"] = backend
        (self.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")

    def backend_run(self, backend: str, peak: float | None) -> Row:
        self.set_attention(backend)
        t0 = time.time()
        try:
            proc = self.sh(sys.executable, "train.py")
        except subprocess.TimeoutExpired:
            return Row(f"attention {backend}", "FAILED", note=f"train.py ran past {RUN_TIMEOUT_S:g} s")
        seconds = time.time() - t0
        log = proc.stdout + proc.stderr
        if proc.returncode == 2:  # a config refusal: this train.py or gitar does not offer the backend
            return Row(f"attention {backend}", "unsupported", note=log.strip().splitlines()[-1][:120])
        if proc.returncode != 0:
            return Row(f"attention {backend}", "FAILED", seconds=seconds, note=log.strip().splitlines()[-1][:120])
        used = next((ln for ln in log.splitlines() if ln.startswith(("cuda", "cpu", "mps"))), "")
        if backend not in used.split():
            # The platform fell back (a warning line says why): the numbers are another backend's.
            warning = next((ln for ln in log.splitlines() if ln.startswith("warning:")), "")
            return Row(f"attention {backend}", "unsupported", seconds=seconds, note=f"ran as: {used}; {warning}"[:120])
        got = read_run(log, self.total_batch_size)
        tok_s = got.get("tok_s")
        mfu = mfu_percent(tok_s, got["flops_per_token"], peak) if tok_s and "flops_per_token" in got else None
        return Row(f"attention {backend}", "ok", tok_s=tok_s, mfu=mfu, mfu_train=got.get("mfu_percent"),
                   val_bpb=got.get("val_bpb"), seconds=seconds, note=used)

    def gitar_run(self) -> Row:
        """The default backend through gitar: sandboxed training, export, harness evaluation."""
        self.set_attention("auto")
        for args in (("git", "init", "-q", "-b", "main"), ("git", "add", "-A"),
                     ("git", "commit", "-q", "-m", "gpu check workspace"),
                     (sys.executable, "-m", "gitar", "init", "check")):
            proc = self.sh(*args)
            if proc.returncode != 0:
                return Row("export + harness eval", "FAILED", note=f"{' '.join(args[:3])}: {proc.stderr.strip()[-120:]}")
        t0 = time.time()
        try:
            proc = self.sh(sys.executable, "-m", "gitar", "run", "--json", timeout=2 * RUN_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            return Row("export + harness eval", "FAILED", note=f"gitar run took over {2 * RUN_TIMEOUT_S + 60:g} s")
        seconds = time.time() - t0
        try:
            record = json.loads(proc.stdout)
        except ValueError:
            return Row("export + harness eval", "FAILED", seconds=seconds, note=proc.stderr.strip()[-120:])
        timings = record.get("timings") or {}
        ok = record.get("status") == "keep" and record.get("val_bpb_source") == "harness"
        note = (f"{record.get('sandbox', '?')}; trainer {timings.get('trainer_s', 0):.1f} s, "
                f"evaluator {timings.get('evaluator_s', 0):.1f} s" if ok
                else str(record.get("reason") or record.get("message") or record)[:120])
        platform = record.get("platform") or {}
        if ok and platform:
            note += f"; {platform.get('device')} {platform.get('dtype')} {platform.get('attention')}"
        return Row("export + harness eval", "ok" if ok else "FAILED", val_bpb=record.get("val_bpb"),
                   mfu_train=record.get("mfu_percent"), seconds=seconds, note=note)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=15.0, help="counted training seconds per run (default 15)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, of fa3, flex, sdpa")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and data: the test suite's CPU configuration")
    args = ap.parse_args(argv)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        ap.error(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    started = time.time()
    probe = probe_device()
    platform = detect_platform(ProcessorConfig("auto", "auto", "auto", None, None), probe)
    peak = peak_flops_for(probe.device_name)
    rows = [Row("platform", "ok", note=platform.describe()
                + (f"; bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}" if probe.cuda else "; no CUDA")
                + f"; triton {'yes' if probe.triton else 'no'}; FA3 {'yes' if probe.fa3 else 'no'}")]
    gitar_peak = f"gitar's estimate {platform.peak_flops / 1e12:.0f} TFLOP/s" if platform.peak_flops else "none"
    rows.append(Row("peak bf16 dense", "ok" if peak else "skipped",
                    note=(f"{peak / 1e12:.1f} TFLOP/s (datasheet); " if peak else "not in the table; ")
                    + f"{gitar_peak}; upstream: MFU {UPSTREAM_MFU_H100} % on an H100"))
    try:
        sandbox.require()
        unconfined = False
    except GitarError:
        unconfined = True
    why = backend_availability(probe)
    try:
        rows.append(export_attention_row(probe))
    except Exception as e:  # a failure here is a row of the table, not the end of the check
        rows.append(Row("export attention", "FAILED", note=f"{type(e).__name__}: {e}"[:200]))
    with tempfile.TemporaryDirectory(prefix="gitar-gpu-check-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp) / "ws"
        if root.exists() and any(root.iterdir()):
            ap.error(f"--keep {root}: exists and is not empty; give a new directory")
        root.mkdir(parents=True, exist_ok=True)
        check = Check(root, tiny=args.tiny, budget_s=args.budget_s)
        try:
            check.build(unconfined)
        except (GitarError, subprocess.TimeoutExpired) as e:
            rows.append(Row("workspace", "FAILED", note=str(e)[:200]))
        else:
            for backend in BACKENDS:
                if backend not in wanted:
                    continue
                if why[backend] is not None:
                    rows.append(Row(f"attention {backend}", "skipped", note=str(why[backend])))
                    continue
                rows.append(check.backend_run(backend, peak))
            row = check.gitar_run()
            if unconfined:
                row.note = "no sandbox on this machine (ground.json sandbox off); " + row.note
            rows.append(row)
    title = f"gpu check: {platform.describe()}, {args.budget_s:g} s per run, {time.time() - started:.0f} s in all"
    print(render(rows, title))
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
