"""The lecture's stacking arithmetic, computed from the layers: at equal channel count C, one 7x7
convolution against three stacked 3x3 convolutions (the same receptive field) and a 1x1 -> 3x3 -> 1x1
bottleneck. Receptive field, parameters, FLOPs and non-linearities come from the built modules."""
from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from cnnlab.bench.timing import rounds
from cnnlab.models.stacked import BLOCKS


def receptive_field(layers: list[nn.Module]) -> int:
    """Receptive field (input pixels along one axis) of a chain of layers: each conv or pool of
    kernel k, stride s, dilation d adds (k - 1) * d * (product of earlier strides)."""
    rf, jump = 1, 1
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, d = (m.kernel_size, m.stride, m.dilation if hasattr(m, "dilation") else 1)
            k, s, d = (v[0] if isinstance(v, tuple) else v for v in (k, s, d))
            rf += (k - 1) * d * jump
            jump *= s
    return rf


def conv_flops(block: nn.Sequential, h: int, w: int) -> int:
    """Multiply-adds x 2 of every convolution at an h x w input ('same' padding, stride 1)."""
    return sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * w
               for m in block if isinstance(m, nn.Conv2d))


def compare(channels: int = 64, size: int = 32, batch: int = 8, repeats: int = 5, device: str = "cpu") -> list[dict[str, Any]]:
    """Every block at C = `channels`: parameters, FLOPs, non-linearities, receptive field, and the
    median forward + backward time on the same random batch (the blocks timed in turn, a round at a time)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=dev)
    rows, steps = [], {}
    for name in BLOCKS:
        block = BLOCKS.get(name)(channels, channels, False).to(dev)

        def step(block=block) -> None:
            block.zero_grad(set_to_none=True)
            block(x).sum().backward()

        steps[name] = step
        rows.append({"block": name, "channels": channels,
                     "parameters": sum(p.numel() for p in block.parameters()),
                     "flops": conv_flops(block, size, size),
                     "nonlinearities": sum(isinstance(m, nn.ReLU) for m in block),
                     "receptive_field": receptive_field(list(block))})
    times = rounds(steps, dev, repeats)  # every block once a round, side by side
    for r in rows:
        r["fwd_bwd_ms"] = statistics.median(times[r["block"]]) * 1e3
    return rows
