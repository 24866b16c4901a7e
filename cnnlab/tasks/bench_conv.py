"""`cnnlab bench-conv`: the convolution algorithms timed side by side on a sweep of layer shapes (or
one shape), and the stacking comparison; bench_conv.json and bench_conv.png in a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab import runinfo
from cnnlab.conv.bench import SWEEP, bench_shape
from cnnlab.conv.stacking import compare
from cnnlab.errors import UserError


def parse_shape(text: str) -> tuple[int, int, int, int, int, int]:
    """'N,C,H,W,K,k' -> six positive ints, or a UserError naming the value."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 6 or min(parts) < 1:
        raise UserError(f"--shape {text!r}: expected six positive integers N,C,H,W,K,k (batch, in channels, "
                        f"height, width, out channels, kernel size), e.g. 8,16,64,64,16,7")
    return parts  # type: ignore[return-value]


def run(shape: str | None = None, stacking: bool = False, repeats: int = 5, device: str = "cpu",
        out_dir: str = "runs") -> dict[str, Any]:
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    shapes = [parse_shape(shape)] if shape else SWEEP
    folder = runinfo.new_run_dir(out_dir, "bench-conv")
    rows = [r for s in shapes for r in bench_shape(s, repeats=repeats, device=device)]
    results: dict[str, Any] = {"run_dir": str(folder), "device": device, "repeats": repeats, "rows": rows,
                               "torch_threads": torch.get_num_threads(), "versions": runinfo.versions()}
    if stacking:
        results["stacking"] = compare(repeats=repeats, device=device)
    runinfo.write_json(folder / "bench_conv.json", results)
    from cnnlab.report import plot_bench_conv

    plot_bench_conv(results, folder / "bench_conv.png")
    return results
