"""The one timer every cnnlab bench uses: explicit warm-up, one call per sample, the device
synchronised before each clock read (kernels run asynchronously: a clock read without it times the
launch, not the work), medians, interleaved passes, and paired ratios.

torch.utils.benchmark.Timer is not used: its `timeit` adds warm-up calls to every measurement and
`blocked_autorange` chooses the count itself, while these benches need exactly one call per sample,
samples of several methods interleaved (A, B, A, B, ...) so that the machine's drift falls on all of
them, and untimed work between samples (bench-data drops the page cache before each cold pass)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def once(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Seconds of one call of `fn`, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def seconds(fn: Callable[[], Any], device: torch.device | str | None = None, repeats: int = 5,
            warmup: int = 2) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return [once(fn, device) for _ in range(repeats)]


def median_seconds(fn: Callable[[], Any], device: torch.device | str | None = None, repeats: int = 5,
                   warmup: int = 2) -> float:
    return statistics.median(seconds(fn, device, repeats, warmup))


def interleaved(methods: dict[str, Callable[[], float]], repeats: int,
                before: dict[str, Callable[[], None]] | None = None,
                on_step: Callable[[str], None] = lambda name: None) -> dict[str, list[float]]:
    """Each method `repeats` times, interleaved (a, b, c, a, b, c, ...) so that a drift of the machine
    falls on all of them; each returns its own seconds (or rate); `before[name]` runs untimed ahead of
    each of its passes."""
    out: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            if before and name in before:
                before[name]()
            on_step(name)
            out[name].append(fn())
    return out


def rounds(fns: dict[str, Callable[[], Any]], device: torch.device | str | None = None, repeats: int = 5,
           warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each function in `repeats` rounds (a, b, c, a, b, c, ...), after `warmup` untimed
    calls of each: side-by-side timings whose k-th samples were taken moments apart."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    return interleaved({name: (lambda fn=fn: once(fn, device)) for name, fn in fns.items()}, repeats)


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """The median over rounds of `name`'s time over `base`'s in the same round."""
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


def paired(a: Callable[[], float], b: Callable[[], float], pairs: int = 5, warmup: int = 1) -> dict[str, Any]:
    """A then B, `pairs` times (after `warmup` untimed pairs); each call returns its measure (seconds,
    or a rate). The answer is the median of the per-pair ratios B / A, with their spread: two medians
    taken minutes apart would carry the machine's drift (a third, here) into the ratio."""
    if pairs < 5:
        raise ValueError(f"a paired comparison needs at least 5 pairs, got {pairs}")
    for _ in range(warmup):
        a(), b()
    xs, ys = [], []
    for _ in range(pairs):
        xs.append(a())
        ys.append(b())
    ratios = sorted(y / x for x, y in zip(xs, ys))
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"ratio": statistics.median(ratios), "ratios": [y / x for x, y in zip(xs, ys)], "min": ratios[0],
            "max": ratios[-1], "iqr": [q[0], q[2]], "a": xs, "b": ys, "pairs": pairs}
