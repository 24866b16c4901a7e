"""Side-by-side timing of the convolution algorithms on one layer shape: the same input and weights
for every algorithm, warm-up, then the median of repeats (device-synchronised), with achieved
GFLOP/s, the ratio to `direct`, the extra memory and the error against a float64 reference."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.conv import ALGORITHMS
from cnnlab.conv.algorithms import Unsupported

# (N, C, H, W, K, k): the default sweep, kernel sizes 1-11 at 64 x 64 ('same' padding, stride 1)
SWEEP = [(8, 16, 64, 64, 16, k) for k in (1, 3, 5, 7, 11)]
BENCHED = ["direct", "im2col", "im2col-tiled", "fft", "winograd-2x2", "winograd-4x4"]  # `loops` is for tests


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_shape(shape: tuple[int, int, int, int, int, int], algorithms: list[str] = BENCHED, repeats: int = 5,
                device: str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """One row per algorithm for an (N, C, H, W, K, k) layer with 'same' padding and stride 1."""
    n, c, h, w_, k_out, k = shape
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w_, generator=g).to(dev)
    w = (torch.randn(k_out, c, k, k, generator=g) / (c * k * k) ** 0.5).to(dev)
    pad = k // 2
    ref = F.conv2d(x.double(), w.double(), None, 1, pad)
    flops = 2 * ALGORITHMS.get("direct").multiplications(x.shape, w.shape, padding=pad)
    rows = []
    with torch.no_grad():
        for name in algorithms:
            alg = ALGORITHMS.get(name)
            row: dict[str, Any] = {"algorithm": name, "shape": list(shape)}
            try:
                y = alg(x, w, None, 1, pad)
            except Unsupported as e:
                rows.append({**row, "unsupported": str(e)})
                continue
            t = seconds(lambda: alg(x, w, None, 1, pad), dev, repeats)
            rows.append({**row, "ms": t * 1e3, "gflops": flops / t / 1e9,
                         "extra_mib": alg.workspace(x.shape, w.shape, padding=pad, itemsize=x.element_size()) / 2**20,
                         "multiplications": alg.multiplications(x.shape, w.shape, padding=pad),
                         "rel_error": float((y.double() - ref).abs().max() / ref.abs().max())})
    base = next((r["ms"] for r in rows if r["algorithm"] == "direct" and "ms" in r), None)
    for r in rows:
        if "ms" in r and base:
            r["vs_direct"] = r["ms"] / base
    return rows
