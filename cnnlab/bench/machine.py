"""This machine's limits, measured and cached: what the devices are (read, not measured), which
`trainer.precision` values run on each, peak matmul GFLOP/s per dtype, memory-copy and host-to-device
bandwidth, and the sequential read speed of the disk holding the data. A profile reads its FLOPs
and bytes against these numbers, so none of them is assumed: every one is timed here, with the one
timer (`bench.timing`: warm-up, one call per sample, the device synchronised, medians).

`measure` takes ~8 s on a 2-core CPU, after ~3 s of importing torch (`quick=True`: ~1 s, for tests); `cached` keeps
the result in <cache>/machine-<key>.json, the key hashed from what decides the numbers (CPU model
and SIMD flags, cores, torch version and threads, GPUs, CUDA version, the data folder), so a new
torch or another GPU measures again."""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from cnnlab.bench.timing import once, seconds, sync
from cnnlab.env import cpu_name
from cnnlab.errors import UserError
from cnnlab.io import write_json
from cnnlab.spec import PRECISIONS, TrainerSpec

SCHEMA = 1  # the layout of a cached file; a file of another schema is measured again
MIN_SAMPLE_S = 1e-3  # a timed sample is at least this long (several calls of a small matmul), so the
# clock read and the device sync are small beside it
CHUNK = 8 << 20  # bytes per read() and write() of the disk test: large, sequential
# the CPU flags that decide which kernels torch can use (x86 `flags`, Arm `Features` in /proc/cpuinfo);
# a filter on what is reported, not a claim about any machine
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd",
              "asimdhp", "sve", "sve2", "bf16", "i8mm")
# trainer.precision -> (weights and input dtype, autocast dtype or None): what Lightning runs for each
PLANS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "32-true": (torch.float32, None), "16-mixed": (torch.float32, torch.float16),
    "bf16-mixed": (torch.float32, torch.bfloat16), "16-true": (torch.float16, None),
    "bf16-true": (torch.bfloat16, None), "64-true": (torch.float64, None),
}
DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}


@dataclass(frozen=True)
class Budget:
    """How long each measurement may take. The defaults keep `measure` to ~8 s on a 2-core CPU;
    QUICK to ~1 s (tests: small sizes, few repeats, numbers only roughly right)."""

    matmul_s: float = 2.5  # seconds per (device, dtype) for the matmul sizes together
    cpu_sizes: tuple[int, ...] = (256, 512, 1024, 2048)  # square matmul sizes n, grown while the budget lasts
    cuda_sizes: tuple[int, ...] = (1024, 2048, 4096, 8192)
    repeats: int = 5  # timed samples per size (fewer when the budget runs short)
    memcpy_bytes: int | None = None  # the copied buffer; None: max(64 MiB, 4 x the largest CPU cache)
    disk_bytes: int = 128 << 20  # the temporary file (at most a tenth of the disk's free space)
    disk_s: float = 3.0  # seconds of cold reads (at least one read)
    h2d_repeats: int = 3  # samples per host-to-device copy mode


FULL = Budget()
QUICK = Budget(matmul_s=0.1, cpu_sizes=(64, 128, 256), cuda_sizes=(256, 512), repeats=3, memcpy_bytes=16 << 20,
               disk_bytes=8 << 20, disk_s=0.2, h2d_repeats=1)


# ---------------------------------------------------------------------------------------------- facts

def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def _physical_cores(cpus: list[dict[str, str]]) -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where it does not list them (Arm, macOS)."""
    cores = {(c.get("physical id"), c["core id"]) for c in cpus if "core id" in c}
    return len(cores) or None


def _caches() -> dict[str, int]:
    """CPU 0's caches from sysfs, {"L1d": bytes, "L1i": ..., "L2": ..., "L3": ...}; empty where unreadable."""
    out: dict[str, int] = {}
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
            name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[name] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return out


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "total_memory_bytes": p.total_memory,
                    "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    return out


def facts() -> dict[str, Any]:
    """The devices as the system describes them, nothing timed. Versions come from torch itself, not
    env.versions(): that one imports Lightning and torchvision (~4 s) for numbers these do not decide."""
    cpus = _cpuinfo()
    flags = set((cpus[0].get("flags") or cpus[0].get("Features") or "").split()) if cpus else set()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "cpu": cpu_name(), "physical_cores": _physical_cores(cpus), "logical_cpus": os.cpu_count() or 1,
        "usable_cpus": usable or 1, "torch_threads": torch.get_num_threads(),
        "simd_flags": [f for f in SIMD_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "caches_bytes": _caches(),
        "memory_bytes": _memory_bytes(), "gpus": _gpus(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn is not None else None, "python": sys.version.split()[0],
        "platform": platform.platform(), "machine": platform.machine(),
    }


# ------------------------------------------------------------------------------------------ precisions

def _devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _tiny_step(precision: str, device: torch.device) -> str:
    """One forward+backward of a conv + linear net the way Lightning runs `precision`; returns the
    output's dtype (so that an autocast that did nothing shows). Raises where torch cannot."""
    dtype, autocast = PLANS[precision]
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10)).to(device=device, dtype=dtype)
    x = torch.randn((4, 3, 8, 8), generator=g).to(device=device, dtype=dtype)  # (B, C, H, W)
    y = torch.randint(0, 10, (4,), generator=g).to(device)
    context = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
    with context:
        out = net(x)  # (B, 10)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    sync(device)
    grads = [p.grad for p in net.parameters()]
    if not torch.isfinite(loss) or any(gr is None or not torch.isfinite(gr).all() for gr in grads):
        raise RuntimeError("the step ran, but its loss or gradients are not finite")
    return str(out.dtype).removeprefix("torch.")


def precisions() -> dict[str, dict[str, dict[str, Any]]]:
    """{device: {precision: {...}}} for every `trainer.precision` value cnnlab accepts (spec.PRECISIONS):
    `torch_runs` whether the tiny step ran (and `output_dtype`), `recipe` the recipe check's objection
    on this accelerator (None: accepted), `ok` both, and `reason` the one line why not. 16-mixed on a
    cpu, for one: torch's CPU autocast runs float16, Lightning would quietly run bf16-mixed instead, and
    cnnlab's recipe check refuses it, so it is torch_runs but not ok."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for device in _devices():
        rows: dict[str, dict[str, Any]] = {}
        for precision in PRECISIONS:
            t0 = time.perf_counter()
            try:
                out_dtype, error = _tiny_step(precision, device), None
            except (RuntimeError, TypeError) as e:  # a missing kernel: NotImplementedError is a RuntimeError
                out_dtype, error = None, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            spec = TrainerSpec(accelerator=device.type, precision=precision)
            objections = [why for _, why in spec.cross_checks() + spec.preflight()]
            recipe = "; ".join(objections) or None
            rows[precision] = {"ok": error is None and recipe is None, "torch_runs": error is None,
                               "output_dtype": out_dtype, "recipe": recipe,
                               "reason": "; ".join(r for r in (error, recipe) if r) or None,
                               "seconds": time.perf_counter() - t0}
        out[device.type] = rows
    return out


# ---------------------------------------------------------------------------------------------- matmul

def _room(device: torch.device) -> int | None:
    """Bytes the matmul operands may take: half the free device memory, or an eighth of the host's."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    total = _memory_bytes()
    return total // 8 if total else None


def _time_matmul(n: int, device: torch.device, dtype: torch.dtype, g: torch.Generator, deadline: float,
                 repeats: int) -> dict[str, Any]:
    """One size's row: a warm-up call, a probe call (its time sets how many calls make a sample of at
    least MIN_SAMPLE_S, and how many samples fit before `deadline`: at least one), then the median
    seconds per call of up to `repeats` samples."""
    a, b = (torch.randn((n, n), generator=g).to(device=device, dtype=dtype) for _ in range(2))
    c = torch.empty((n, n), device=device, dtype=dtype)

    def mm() -> None:
        torch.mm(a, b, out=c)

    mm()  # warm-up: kernel choice, thread pool start, first touch of `c`
    probe = once(mm, device)
    calls = max(1, math.ceil(MIN_SAMPLE_S / max(probe, 1e-9)))
    k = max(1, min(repeats, int((deadline - time.perf_counter()) / (probe * calls))))

    def sample() -> None:
        for _ in range(calls):
            mm()

    per_call = statistics.median(seconds(sample, device, repeats=k, warmup=0)) / calls
    return {"n": n, "flops": 2 * n ** 3, "calls_per_sample": calls, "repeats": k, "seconds": per_call,
            "gflops": 2 * n ** 3 / per_call / 1e9}


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seconds_budget: float = 2.5,
                sizes: tuple[int, ...] | None = None, repeats: int = 5) -> dict[str, Any]:
    """Peak GFLOP/s of square matmuls (n x n @ n x n, 2 n^3 FLOPs) over growing sizes: each size gets a
    warm-up call, then up to `repeats` samples (each one or more calls, at least MIN_SAMPLE_S long),
    and its median. The next size is tried only while its predicted cost (the last one's time x
    (n'/n)^3) fits in what is left of `seconds_budget`, so a slow dtype (bfloat16 on a CPU without
    native support) costs seconds, not minutes; a size whose operands would take more than half the
    free memory ends the sweep too (`stopped` says which). `gflops` is the best size's."""
    device = torch.device(device)
    sizes = sizes or (FULL.cuda_sizes if device.type == "cuda" else FULL.cpu_sizes)
    start = time.perf_counter()
    deadline = start + seconds_budget
    rows: list[dict[str, Any]] = []
    stopped = "largest size"
    room = _room(device)
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        left = deadline - time.perf_counter()
        if rows and rows[-1]["seconds"] * (n / rows[-1]["n"]) ** 3 * 3 > left:  # warm-up, probe, one sample
            stopped = "budget"
            break
        if room is not None and 3 * n * n * dtype.itemsize > room:
            stopped = "memory"
            break
        rows.append(_time_matmul(n, device, dtype, g, deadline, repeats))
    best = max(rows, key=lambda r: r["gflops"], default={"gflops": None, "n": None})  # none: no size fit in memory
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch."), "gflops": best["gflops"],
            "n": best["n"], "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "budget_s": seconds_budget,
            "seconds": time.perf_counter() - start, "stopped": stopped, "sizes": rows}


# ---------------------------------------------------------------------------------------------- memory

def _memcpy_bytes() -> int:
    """Large enough that the copy runs from and to memory, not a cache: 4 x the largest cache, at
    least 64 MiB, at most a sixteenth of the memory."""
    nbytes = max(64 << 20, 4 * max(_caches().values(), default=0))
    total = _memory_bytes()
    return min(nbytes, total // 16) if total else nbytes


def memcpy_gbps(nbytes: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """GB/s of one large host copy (dst.copy_(src), torch's threads), both buffers touched beforehand.
    Not bench.data.memcpy_pass: that one copies batch by batch into a fresh buffer, so a large copy
    would time the page faults of its first touch. `gb_per_s` counts the bytes copied; the memory
    traffic is twice that (read + write)."""
    nbytes = nbytes or _memcpy_bytes()
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    median = statistics.median(seconds(lambda: dst.copy_(src), "cpu", repeats=repeats, warmup=1))
    return {"bytes": nbytes, "repeats": repeats, "seconds": median, "gb_per_s": nbytes / median / 1e9,
            "threads": torch.get_num_threads()}


def h2d_gbps(repeats: int = 3, batch_bytes: int = 4 << 20) -> dict[str, Any] | None:
    """Host-to-device GB/s, pageable and pinned, from bench.data.h2d_bandwidth (one batch and a large
    copy, sync and non_blocking); `pageable_gb_per_s` / `pinned_gb_per_s` are the large copy's. None
    without CUDA. bench.data is imported here only: it brings Lightning (~7 s)."""
    if not torch.cuda.is_available():
        return None
    from cnnlab.bench.data import h2d_bandwidth

    rows = h2d_bandwidth(batch_bytes, repeats) or []
    large = {r["mode"]: r["gb_per_s"] for r in rows if r["bytes"] == max(x["bytes"] for x in rows)}
    return {"pageable_gb_per_s": large.get("pageable, sync"), "pinned_gb_per_s": large.get("pinned, sync"),
            "pinned_non_blocking_gb_per_s": large.get("pinned, non_blocking"), "rows": rows}


# ------------------------------------------------------------------------------------------------ disk

def _evict(path: Path) -> bool:
    """Drop one file's clean pages from the page cache (posix_fadvise DONTNEED). Not bench.data's
    drop_cache: as root it empties the whole machine's cache (and syncs every disk), a side effect a
    profile should not have."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _resident(path: Path) -> float | None:
    """The fraction of the file's pages in the page cache (mincore on a read-only mapping of it), so
    that a read is called cold only when it was; None where mincore cannot be reached (not Linux)."""
    size = path.stat().st_size
    if not sys.platform.startswith("linux") or size == 0:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                                  ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    except (OSError, AttributeError):
        return None
    pages = -(-size // os.sysconf("SC_PAGE_SIZE"))
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            if libc.mincore(addr, size, vec) != 0:
                return None
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


def _read_all(path: Path, buf: bytearray) -> None:
    """Read the file front to back in len(buf)-byte chunks, unbuffered."""
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def _existing(folder: Path) -> Path:
    """`folder`, or its nearest existing parent: the disk that will hold it."""
    folder = Path(folder).expanduser().resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def disk_read_mbps(folder: str | Path, size_bytes: int = FULL.disk_bytes, seconds_budget: float = FULL.disk_s,
                   repeats: int = 3) -> dict[str, Any]:
    """Sequential read MB/s of the disk holding `folder`: a temporary file of random bytes (at most a
    tenth of the free space) is written and fsynced, then read front to back in CHUNK-byte reads, each
    read after dropping the file from the page cache, `repeats` times or while `seconds_budget` lasts
    (at least once); then read warm (from the cache) for comparison. `cache` says whether the timed
    reads were cold (the drop worked: mincore saw under a tenth of the pages resident), warm, or
    unknown. A VM's host may still cache the file; that cannot be seen from here. The file is always
    removed. A folder that cannot take the file gives `mb_per_s` None and the reason."""
    where = _existing(Path(folder))
    free = shutil.disk_usage(where).free
    size = min(size_bytes, free // 10) // CHUNK * CHUNK or min(size_bytes, free // 10)
    base = {"folder": str(where), "bytes": size}
    if size < 1 << 20:
        return {**base, "mb_per_s": None, "reason": f"{free >> 20} MiB free on the disk of {where}: too little to test"}
    try:
        fd, name = tempfile.mkstemp(prefix=".cnnlab-disk-", suffix=".tmp", dir=where)
    except OSError as e:
        return {**base, "mb_per_s": None, "reason": f"cannot write a temporary file in {where}: {e.strerror or e}"}
    path = Path(name)
    try:
        chunk = os.urandom(min(CHUNK, size))  # random: a compressing filesystem cannot shrink it

        def write() -> None:
            with os.fdopen(fd, "wb", buffering=0) as f:
                for _ in range(size // len(chunk)):
                    f.write(chunk)
                f.write(chunk[: size % len(chunk)])
                os.fsync(f.fileno())

        try:
            write_s = once(write)
        except OSError as e:
            return {**base, "mb_per_s": None, "reason": f"cannot write {size >> 20} MiB in {where}: {e.strerror or e}"}
        buf = bytearray(len(chunk))
        cold, resident = [], []
        end = time.perf_counter() + seconds_budget
        for _ in range(repeats):
            evicted = _evict(path)
            resident.append(_resident(path) if evicted else 1.0)
            cold.append(once(lambda: _read_all(path, buf)))
            if time.perf_counter() > end:
                break
        warm = statistics.median(once(lambda: _read_all(path, buf)) for _ in range(3))
    finally:
        path.unlink(missing_ok=True)
    known = [r for r in resident if r is not None]
    cache = "unknown" if not known else "cold" if max(known) < 0.1 else "warm"
    median = statistics.median(cold)
    return {**base, "mb_per_s": size / median / 1e6, "cache": cache, "resident_before_read": known,
            "reads": len(cold), "read_seconds": cold, "warm_mb_per_s": size / warm / 1e6,
            "write_mb_per_s": size / write_s / 1e6, "dropped_by": "posix_fadvise(DONTNEED)" if evicted else None}


# ------------------------------------------------------------------------------------- measure and cache

def cache_key(facts: dict[str, Any], data_folder: str | Path, quick: bool = False) -> str:
    """16 hex digits of a sha256 over what decides the numbers: CPU model, SIMD flags, logical CPUs,
    torch version and threads, GPU names, CUDA version, the data folder's disk (its path), quick or not."""
    parts = [facts["cpu"], facts["simd_flags"], facts["logical_cpus"], facts["torch"], facts["torch_threads"],
             [gpu["name"] for gpu in facts["gpus"]], facts["cuda"], str(_existing(Path(data_folder))), quick]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$CNNLAB_CACHE_DIR, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab."""
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cnnlab"


def cache_path(data_folder: str | Path, cache_dir: str | Path | None = None, quick: bool = False) -> Path:
    """Where `cached` keeps this machine's numbers for `data_folder`."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / f"machine-{cache_key(facts(), data_folder, quick)}.json"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def measure(data_folder: str | Path, progress: Callable[[str], None] = lambda name: None, *,
            quick: bool = False) -> dict[str, Any]:
    """Everything above, in one dict (JSON types only), `progress(name)` called before each part:
    {"schema", "key", "quick", "measured_at" (ISO time), "seconds" (the whole measurement), "load_average"
    (1, 5, 15-minute, before and after: other work on the machine lowers every number), "facts",
    "precisions" {device: {precision: ...}}, "matmul" {device: {dtype: ...}}, "memcpy",
    "h2d" (None without CUDA), "disk"}."""
    budget = QUICK if quick else FULL
    start, load = time.perf_counter(), _load_average()
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    progress("facts")
    info = facts()
    progress("precisions")
    supported = precisions()
    matmul: dict[str, dict[str, Any]] = {}
    for device in _devices():
        sizes = budget.cuda_sizes if device.type == "cuda" else budget.cpu_sizes
        for dtype in DTYPES[device.type]:
            name = str(dtype).removeprefix("torch.")
            progress(f"matmul {device.type} {name}")
            peak = matmul_peak(device, dtype, budget.matmul_s, sizes, budget.repeats)
            matmul.setdefault(device.type, {})[name] = peak
    progress("memcpy")
    memcpy = memcpy_gbps(budget.memcpy_bytes, budget.repeats)
    progress("h2d")
    h2d = h2d_gbps(budget.h2d_repeats)
    progress("disk")
    disk = disk_read_mbps(data_folder, budget.disk_bytes, budget.disk_s)
    return {"schema": SCHEMA, "key": cache_key(info, data_folder, quick), "quick": quick, "measured_at": stamp,
            "seconds": time.perf_counter() - start, "load_average": {"before": load, "after": _load_average()},
            "facts": info, "precisions": supported, "matmul": matmul, "memcpy": memcpy, "h2d": h2d, "disk": disk}


# the top level of a cached file: key -> type(s); a file that differs is measured again
SECTIONS = {"schema": int, "key": str, "quick": bool, "measured_at": str, "seconds": (int, float),
            "load_average": dict, "facts": dict, "precisions": dict, "matmul": dict, "memcpy": dict,
            "h2d": (dict, type(None)), "disk": dict}


def _load(path: Path, key: str) -> dict[str, Any] | None:
    """The cached numbers at `path`, or None for anything but a whole file of this schema and key
    (missing, truncated, not JSON, another layout): those are measured again, never a traceback."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("key") != key:
        return None
    if any(not isinstance(data.get(name), kind) for name, kind in SECTIONS.items()):
        return None
    for by_dtype in data["matmul"].values():
        if not isinstance(by_dtype, dict) or not all(isinstance(m, dict) and "gflops" in m and "sizes" in m
                                                     for m in by_dtype.values()):
            return None
    return data


def cached(data_folder: str | Path, refresh: bool = False, cache_dir: str | Path | None = None,
           progress: Callable[[str], None] = lambda name: None, *, quick: bool = False) -> tuple[dict[str, Any], bool]:
    """(this machine's numbers, whether they came from the cache). Measured (and written atomically)
    when `refresh`, or when no valid file holds them for this key; see `cache_path` for where."""
    path = cache_path(data_folder, cache_dir, quick)
    key = path.stem.removeprefix("machine-")
    if not refresh and (data := _load(path, key)) is not None:
        return data, True
    result = measure(data_folder, progress, quick=quick)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    except OSError as e:
        raise UserError(f"cannot write the machine cache {path}: {e.strerror or e} "
                        f"(set CNNLAB_CACHE_DIR to a writable folder)") from None
    return result, False
