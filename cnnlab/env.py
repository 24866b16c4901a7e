"""The environment a result was measured in: package versions (CUDA and cuDNN too), the device a
run trained on, and the process's peak memory."""
from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Any


def versions() -> dict[str, str | None]:
    import pytorch_lightning as pl
    import torch
    import torchvision

    import cnnlab

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"cnnlab": cnnlab.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pytorch_lightning": pl.__version__,
            "cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn is not None else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(trainer: Any) -> dict[str, Any]:
    """The device a Trainer's strategy ran on (not the module's, which teardown moves back to the CPU)."""
    import torch

    device = trainer.strategy.root_device
    info: dict[str, Any] = {"type": device.type, "processes": trainer.world_size, "strategy": type(trainer.strategy).__name__}
    if device.type == "cuda":
        return {**info, "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {**info, "name": cpu_name(), "threads": torch.get_num_threads()}


def host_peak_mib() -> float:
    """This process's peak resident memory: getrusage's ru_maxrss is in KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def device_free_bytes(device: Any) -> int:
    """Bytes a new tensor can take on a CUDA device: what the driver reports free plus what this
    process's caching allocator holds reserved but unused (freed by an earlier run in the same
    process, and not given back to the driver)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def host_free_bytes() -> int:
    """Bytes of host memory a process can still take: the kernel's MemAvailable (page cache it can
    drop included), else the free pages."""
    import os

    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
