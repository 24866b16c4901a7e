"""Side-by-side timing of the convolution algorithms on one layer shape: the same input and weights
for every algorithm, warm-up, then `repeats` rounds of one call each (device-synchronised), with the
median time, achieved GFLOP/s, the ratio to `direct` (the median of each round's ratio), the extra
memory and the error against a float64 reference."""
from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.bench.timing import ratio, rounds
from cnnlab.conv import ALGORITHMS
from cnnlab.conv.algorithms import Unsupported
from cnnlab.conv.module import conv_padding, swap, why_not

# (N, C, H, W, K, k): the default sweep, kernel sizes 1-11 at 64 x 64 ('same' padding, stride 1)
SWEEP = [(8, 16, 64, 64, 16, k) for k in (1, 3, 5, 7, 11)]
BENCHED = ["direct", "im2col", "im2col-tiled", "fft", "winograd-2x2", "winograd-4x4"]  # `loops` is for tests


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
    rows, fns = [], {}
    with torch.no_grad():
        for name in algorithms:
            alg = ALGORITHMS.get(name)
            row: dict[str, Any] = {"algorithm": name, "shape": list(shape)}
            try:
                y = alg(x, w, None, 1, pad)
            except Unsupported as e:
                rows.append({**row, "unsupported": str(e)})
                continue
            fns[name] = lambda alg=alg: alg(x, w, None, 1, pad)
            rows.append({**row, "extra_mib": alg.workspace(x.shape, w.shape, padding=pad, itemsize=x.element_size()) / 2**20,
                         "multiplications": alg.multiplications(x.shape, w.shape, padding=pad),
                         "rel_error": float((y.double() - ref).abs().max() / ref.abs().max())})
        times = rounds(fns, dev, repeats)  # every algorithm once a round: drift falls on all of them
    for r in rows:
        if r["algorithm"] in times:
            t = statistics.median(times[r["algorithm"]])
            r.update(ms=t * 1e3, gflops=flops / t / 1e9)
            if "direct" in times:
                r["vs_direct"] = ratio(times, r["algorithm"], "direct")
    return rows


def conv_inputs(net: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, torch.nn.Conv2d, tuple[int, ...]]]:
    """(name, layer, input shape) of every nn.Conv2d that one forward pass of `x` runs, in order."""
    seen: list[tuple[str, torch.nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, m, tuple(args[0].shape))))
             for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def bench_model(net: torch.nn.Module, input_shape: tuple[int, ...], algorithms: list[str] = BENCHED,
                repeats: int = 5, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Every convolution of `net` at `input_shape`, timed with each algorithm that can compute it
    (the same random input of the layer's shape and the layer's own weights), and the whole net's
    forward + backward with its convolutions on each algorithm (the others on direct)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    net = net.to(dev)
    x = torch.randn(*input_shape, generator=g).to(dev)
    layers = []
    with torch.no_grad():
        for name, m, shape in conv_inputs(net, x):
            xi = torch.randn(*shape, generator=g).to(dev)
            ref = torch.nn.Conv2d.forward(copy.deepcopy(m).double(), xi.double())  # any padding mode, groups
            flops = 2 * ref.numel() * m.weight[0].numel()
            row: dict[str, Any] = {"layer": name, "input": list(shape), "weight": list(m.weight.shape),
                                   "stride": list(m.stride), "groups": m.groups, "mflops": flops / 1e6, "ms": {},
                                   "rel_error": {}, "unsupported": {}}
            fns = {}
            for alg_name in algorithms:
                reason = why_not(alg_name, m)
                if reason is not None:
                    row["unsupported"][alg_name] = reason
                    continue
                if alg_name == "direct":  # the layer as PyTorch computes it
                    fn = lambda m=m, xi=xi: torch.nn.Conv2d.forward(m, xi)  # noqa: E731
                else:
                    alg, pad = ALGORITHMS.get(alg_name), conv_padding(m)
                    fn = lambda alg=alg, pad=pad, m=m, xi=xi: alg(xi, m.weight, m.bias, m.stride, pad, m.dilation)  # noqa: E731
                y = fn()
                fns[alg_name] = fn
                row["rel_error"][alg_name] = float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            row["ms"] = {a: statistics.median(ts) * 1e3 for a, ts in rounds(fns, dev, repeats).items()}
            layers.append(row)
    totals, steps = [], {}
    direct_all = sum(r["ms"]["direct"] for r in layers)
    for alg_name in algorithms:
        on = [r for r in layers if alg_name in r["ms"]]
        ms = sum(r["ms"][alg_name] for r in on)
        direct_on = sum(r["ms"]["direct"] for r in on)
        net_alg = copy.deepcopy(net).train()
        swap(net_alg, alg_name)

        def step(net_alg=net_alg) -> None:
            net_alg.zero_grad(set_to_none=True)
            net_alg(x).float().sum().backward()

        steps[alg_name] = step
        totals.append({"algorithm": alg_name, "layers": len(on), "of": len(layers), "ms": ms,
                       "vs_direct": ms / direct_on if on and direct_on else None,
                       "all_layers_ms": ms + direct_all - direct_on})  # unsupported layers on direct
    net_times = rounds(steps, dev, repeats)  # the whole net's step on each algorithm, a round at a time
    for t in totals:
        t["net_fwd_bwd_ms"] = statistics.median(net_times[t["algorithm"]]) * 1e3
        t["net_vs_direct"] = ratio(net_times, t["algorithm"], "direct") if "direct" in net_times else None
    return {"input": list(input_shape), "layers": layers, "totals": totals}
