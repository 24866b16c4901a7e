"""A network's convolutions run through a registered algorithm (`model.conv_impl`), so that a whole
net can be timed and trained with it: every nn.Conv2d the algorithm can compute becomes an
`AlgorithmConv2d` (the same parameters, so the same state-dict keys and checkpoints), and the others
stay on `direct`, each with the reason."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.conv import ALGORITHMS
from cnnlab.conv.algorithms import Pair, Unsupported, pair

LOW = (torch.float16, torch.bfloat16)  # computed in float32 and cast back (torch.fft has no bfloat16 on CPU)


def conv_padding(m: nn.Conv2d) -> Pair:
    """The zero padding per side of an nn.Conv2d, with 'valid' and 'same' resolved; Unsupported when
    'same' needs uneven padding (an even extent) or the padding is not zeros."""
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode '{m.padding_mode}' (only zeros)")
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        extents = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
        if any(e % 2 for e in extents):
            raise Unsupported("padding 'same' with an even kernel extent (uneven padding)")
        return (extents[0] // 2, extents[1] // 2)
    return pair(m.padding)


def why_not(name: str, m: nn.Conv2d) -> str | None:
    """None if algorithm `name` can compute layer `m`, else the reason it cannot."""
    if name == "direct":
        return None
    try:
        if m.groups != 1:
            raise Unsupported(f"groups {m.groups} (only 1: dense convolutions)")
        conv_padding(m)
        ALGORITHMS.get(name).check(tuple(m.weight.shape), pair(m.stride), pair(m.dilation))
    except Unsupported as e:
        return str(e)
    return None


class AlgorithmConv2d(nn.Conv2d):
    """nn.Conv2d whose forward runs `algorithm`; half-precision inputs are computed in float32, and
    so is everything under autocast (which would otherwise recast each matmul inside the algorithm
    to 16 bits)."""

    algorithm: str = "direct"

    def forward(self, x: Tensor) -> Tensor:
        alg, dtype = ALGORITHMS.get(self.algorithm), x.dtype
        with torch.autocast(x.device.type, enabled=False):
            w, b = self.weight, self.bias
            if dtype in LOW:
                x, w, b = x.float(), w.float(), None if b is None else b.float()
            y = alg(x, w.to(x.dtype), None if b is None else b.to(x.dtype), self.stride, conv_padding(self), self.dilation)
        return y.to(dtype) if dtype in LOW else y


@dataclass(frozen=True)
class Swapped:
    layer: str
    algorithm: str  # what the layer runs
    reason: str | None = None  # why it stays on direct


def swap(net: nn.Module, name: str) -> list[Swapped]:
    """Put every convolution of `net` that algorithm `name` can compute on it, in place; returns
    what each layer runs (and why a layer stays on direct)."""
    ALGORITHMS.get(name)  # an unknown name: KeyError with did-you-mean
    plan = []
    for layer, m in list(net.named_modules()):
        if not isinstance(m, nn.Conv2d):
            continue
        reason = why_not(name, m)
        if reason is not None or name == "direct":
            plan.append(Swapped(layer, "direct", reason))
            if isinstance(m, AlgorithmConv2d):
                m.algorithm = "direct"
            continue
        if not isinstance(m, AlgorithmConv2d):
            new = AlgorithmConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, m.bias is not None, m.padding_mode, device="meta")
            new.weight, new.bias = m.weight, m.bias
            new.train(m.training)
            parent, _, attr = layer.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, new)
            m = new
        m.algorithm = name
        plan.append(Swapped(layer, name))
    return plan


def summary(name: str, plan: list[Swapped]) -> dict:
    """What results.json records of `model.conv_impl`."""
    return {"algorithm": name, "layers": sum(s.algorithm == name for s in plan), "of": len(plan),
            "on_direct": {s.layer: s.reason for s in plan if s.reason}}
