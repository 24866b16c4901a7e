"""Rounding float32 values into 16-bit weight formats, to nearest or stochastically.

Stochastic rounding goes up to the next representable number with probability equal to the
distance already covered, so E[round(x)] = x: updates far smaller than the spacing of the format
still move the weights on average, where rounding to nearest drops every one of them. All draws
come from an explicit generator.

A format stores weights in a 16-bit tensor (`encode`) and gives float32 back (`decode`):
  bf16     torch.bfloat16; stochastic rounding by integer bit tricks on the float32 pattern
  fp16     torch.float16; stochastic rounding between the two neighbours (torch.nextafter)
  fixed16  int16 codes of a fixed-point number with `int_bits` (sign included) and `frac_bits`,
           int_bits + frac_bits = 16 (Gupta et al. 2015); values beyond the range saturate
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ROUNDINGS = ("nearest", "stochastic")
LOW_16 = (1 << 16) - 1  # the float32 mantissa bits that bfloat16 drops
HIGH_16 = -(1 << 16)  # 0xFFFF0000 as an int32: sign, exponent and the 7 mantissa bits bfloat16 keeps


def _uniform(x: Tensor, g: torch.Generator | None) -> Tensor:
    """U[0, 1) in float32, one per element of x, on x's device."""
    return torch.rand(x.shape, generator=g, device=x.device, dtype=torch.float32)


def bf16_stochastic(x: Tensor, g: torch.Generator | None) -> Tensor:
    """float32 -> bfloat16, rounded up in magnitude with probability (dropped bits) / 2^16.

    A float32's bit pattern read as an int32 is sign and magnitude, so adding a uniform integer in
    [0, 2^16) to it carries into the kept bits exactly that often, for either sign; masking the low
    16 bits then truncates. Exactly unbiased, the same on every device."""
    if x.dtype != torch.float32:
        raise ValueError(f"bf16_stochastic takes float32, got {x.dtype}")
    noise = torch.randint(0, 1 << 16, x.shape, generator=g, device=x.device, dtype=torch.int32)
    bits = (x.contiguous().view(torch.int32) + noise) & HIGH_16
    return bits.view(torch.float32).view(x.shape).to(torch.bfloat16)  # exact: the dropped bits are zero


def neighbour_stochastic(x: Tensor, dtype: torch.dtype, g: torch.Generator | None) -> Tensor:
    """float32 -> a narrower float dtype, stochastically between the two representable neighbours
    of x: up with probability (x - lo) / (hi - lo). Both differences are exact in float32 (the
    neighbours are within a factor of 2 of x), so the bias is below 2^-24 of a spacing. Values
    beyond the finite range go to +-inf, as rounding to nearest does."""
    near = x.to(dtype)
    toward = torch.where(near.float() > x, -torch.inf, torch.inf).to(dtype)
    other = torch.nextafter(near, toward)
    lo, hi = torch.minimum(near, other).float(), torch.maximum(near, other).float()
    up = _uniform(x, g) < (x - lo) / (hi - lo)
    out = torch.where(up, hi, lo).to(dtype)
    return torch.where((near.float() == x) | near.isinf() | x.isnan(), near, out)


def fixed_codes(x: Tensor, frac_bits: int, stochastic: bool, g: torch.Generator | None) -> Tensor:
    """float32 -> int16 codes of round(x * 2^frac_bits), saturated to [-2^15, 2^15 - 1].
    Stochastic: floor, plus one with probability equal to the fraction (exact in float32: scaling
    by a power of two is exact, and so is subtracting the floor)."""
    scaled = x * 2.0 ** frac_bits
    if stochastic:
        lo = scaled.floor()
        scaled = lo + (_uniform(x, g) < scaled - lo).float()
    else:
        scaled = scaled.round()  # half to even
    return scaled.nan_to_num(0.0).clamp_(-(1 << 15), (1 << 15) - 1).to(torch.int16)


@dataclass(frozen=True)
class Format:
    """A 16-bit weight format: storage dtype, float32 <-> storage, and what it can represent."""

    name: str
    storage: torch.dtype
    frac_bits: int = 0  # fixed16 only

    def encode(self, x: Tensor, rounding: str, g: torch.Generator | None = None) -> Tensor:
        """float32 -> storage, to nearest or stochastically (drawing from `g`)."""
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        x = x.float()
        stochastic = rounding == "stochastic"
        if self.storage == torch.int16:
            return fixed_codes(x, self.frac_bits, stochastic, g)
        if not stochastic:
            return x.to(self.storage)
        if self.storage == torch.bfloat16:
            return bf16_stochastic(x, g)
        return neighbour_stochastic(x, self.storage, g)

    def decode(self, s: Tensor) -> Tensor:
        """storage -> float32 (exact)."""
        if self.storage == torch.int16:
            return s.float() * 2.0 ** -self.frac_bits
        return s.float()

    @property
    def range(self) -> tuple[float, float]:
        """The smallest and largest finite value."""
        if self.storage == torch.int16:
            step = 2.0 ** -self.frac_bits
            return -(1 << 15) * step, ((1 << 15) - 1) * step
        big = torch.finfo(self.storage).max
        return -big, big

    def describe(self) -> str:
        if self.storage == torch.int16:
            lo, hi = self.range
            return f"fixed16 <{16 - self.frac_bits},{self.frac_bits}> (step 2^-{self.frac_bits}, range [{lo:g}, {hi:g}])"
        return self.name


DTYPES = ("bf16", "fp16", "fixed16")


def weight_format(dtype: str, frac_bits: int = 12) -> Format:
    """'bf16' | 'fp16' | 'fixed16' (with `frac_bits` of the 16) -> its Format."""
    if dtype == "bf16":
        return Format("bf16", torch.bfloat16)
    if dtype == "fp16":
        return Format("fp16", torch.float16)
    if dtype == "fixed16":
        if not 0 <= frac_bits <= 15:
            raise ValueError(f"fixed16 frac_bits must be in [0, 15] (one bit is the sign), got {frac_bits}")
        return Format("fixed16", torch.int16, frac_bits)
    raise ValueError(f"weight dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
