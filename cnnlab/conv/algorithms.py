"""The algorithms. Each is registered with what it supports (`Algorithm.check` raises
`Unsupported` naming the algorithm and its limits), the extra memory it allocates beyond input,
weights and output (`workspace`), and the multiplications it performs (`multiplications`).

direct    F.conv2d: oneDNN on CPU, cuDNN on GPU; the reference to beat
loops     one dot product per output pixel, in Python: a naive reference for tiny shapes
im2col    every receptive field unrolled into a column (k*k x the input), then one GEMM
im2col-tiled  the same, a band of output rows at a time, so the buffer stays bounded
fft       rfft2 of input and kernel, one batched complex matmul over channels per frequency, inverse
winograd-2x2 / winograd-4x4   F(m x m, 3 x 3): tiles transformed by small matrices, a^2 products per tile
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.conv import ALGORITHMS

Pair = tuple[int, int]


class Unsupported(ValueError):
    """A shape or setting an algorithm cannot compute."""


def pair(v: int | tuple[int, int]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Algorithm:
    name: str
    fn: Callable[..., Tensor]
    strides: tuple[int, ...] | None = None  # None: any
    dilations: tuple[int, ...] | None = None
    kernels: tuple[int, ...] | None = None  # square kernel sizes; None: any
    workspace_fn: Callable[..., int] | None = None
    mults_fn: Callable[..., int] | None = None

    def check(self, w_shape: tuple[int, ...], stride: Pair, dilation: Pair) -> None:
        kh, kw = w_shape[-2:]
        limits = []
        if self.strides is not None and not set(stride) <= set(self.strides):
            limits.append(f"stride {', '.join(map(str, self.strides))} (got {stride[0] if stride[0] == stride[1] else stride})")
        if self.dilations is not None and not set(dilation) <= set(self.dilations):
            limits.append(f"dilation {', '.join(map(str, self.dilations))} (got {dilation[0] if dilation[0] == dilation[1] else dilation})")
        if self.kernels is not None and not (kh == kw and kh in self.kernels):
            limits.append(f"{'/'.join(f'{k}x{k}' for k in self.kernels)} kernels (got {kh}x{kw})")
        if limits:
            raise Unsupported(f"{self.name} supports only {'; '.join(limits)}")

    def __call__(self, x: Tensor, w: Tensor, b: Tensor | None = None, stride: int | Pair = 1,
                 padding: int | Pair = 0, dilation: int | Pair = 1) -> Tensor:
        if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
            raise Unsupported(f"{self.name}: expected x (N, C, H, W) and w (K, C, kh, kw), got {tuple(x.shape)} and {tuple(w.shape)}")
        s, p, d = pair(stride), pair(padding), pair(dilation)
        self.check(tuple(w.shape), s, d)
        oh, ow = (out_size(x.shape[2 + i], w.shape[2 + i], s[i], p[i], d[i]) for i in range(2))
        if oh < 1 or ow < 1:
            raise Unsupported(f"{self.name}: a {tuple(w.shape[-2:])} kernel (dilation {d}) does not fit the "
                              f"{tuple(x.shape[-2:])} input padded by {p}")
        y = self.fn(x, w, s, p, d, (oh, ow))
        return y if b is None else y + b.view(1, -1, 1, 1)

    def workspace(self, x_shape, w_shape, stride=1, padding=0, dilation=1, itemsize: int = 4) -> int:
        """Bytes this algorithm allocates beyond input, weights and output (its own buffers)."""
        if self.workspace_fn is None:
            return 0
        return self.workspace_fn(x_shape, w_shape, pair(stride), pair(padding), pair(dilation)) * itemsize

    def multiplications(self, x_shape, w_shape, stride=1, padding=0, dilation=1) -> int:
        """Scalar multiplications of the convolution proper (transforms excluded: they are additions
        and multiplications by small constants, amortised over channels)."""
        fn = self.mults_fn or _direct_mults
        return fn(x_shape, w_shape, pair(stride), pair(padding), pair(dilation))


def _outs(x_shape, w_shape, s, p, d) -> Pair:
    return tuple(out_size(x_shape[2 + i], w_shape[2 + i], s[i], p[i], d[i]) for i in range(2))  # type: ignore[return-value]


def _direct_mults(x_shape, w_shape, s, p, d) -> int:
    oh, ow = _outs(x_shape, w_shape, s, p, d)
    return x_shape[0] * w_shape[0] * oh * ow * w_shape[1] * w_shape[2] * w_shape[3]


def register(alg: Algorithm) -> Algorithm:
    return ALGORITHMS.register(alg.name)(alg)


# ----------------------------------------------------------------------------- direct, loops

def _direct(x, w, s, p, d, out):
    """torch's own convolution (F.conv2d: oneDNN on a CPU, cuDNN on a GPU), the reference."""
    return F.conv2d(x, w, None, s, p, d)


def _loops(x, w, s, p, d, out):
    """y[n, k, i, j] = sum over c, u, v of x_padded[n, c, i*s + u*d, j*s + v*d] * w[k, c, u, v]:
    one dot product per output pixel."""
    xp = F.pad(x, (p[1], p[1], p[0], p[0]))
    K, C, kh, kw = w.shape
    wf = w.reshape(K, -1)
    rows = []
    for i in range(out[0]):
        cols = []
        for j in range(out[1]):
            patch = xp[:, :, i * s[0]: i * s[0] + (kh - 1) * d[0] + 1: d[0], j * s[1]: j * s[1] + (kw - 1) * d[1] + 1: d[1]]
            cols.append(patch.reshape(x.shape[0], -1) @ wf.T)  # (N, K)
        rows.append(torch.stack(cols, -1))  # (N, K, OW)
    return torch.stack(rows, -2)  # (N, K, OH, OW)


register(Algorithm("direct", _direct))
register(Algorithm("loops", _loops))


# ----------------------------------------------------------------------------- im2col

def _im2col(x, w, s, p, d, out):
    """Unfold every receptive field into a column (im2col), then one matmul with the flattened kernels."""
    cols = F.unfold(x, w.shape[-2:], dilation=d, padding=p, stride=s)  # (N, C*kh*kw, OH*OW)
    y = w.reshape(w.shape[0], -1) @ cols  # one GEMM, batched over N
    return y.view(x.shape[0], w.shape[0], *out)


def _im2col_buffer(x_shape, w_shape, s, p, d) -> int:
    oh, ow = _outs(x_shape, w_shape, s, p, d)
    return x_shape[0] * w_shape[1] * w_shape[2] * w_shape[3] * oh * ow


TILE_ROWS = 8  # output rows per band of im2col-tiled


def _im2col_tiled(x, w, s, p, d, out):
    """im2col on bands of TILE_ROWS output rows: the unrolled buffer is at most TILE_ROWS / OH of
    im2col's."""
    xp = F.pad(x, (p[1], p[1], p[0], p[0]))
    kh = w.shape[2]
    span = (kh - 1) * d[0] + 1  # input rows one output row reads
    bands = []
    for r0 in range(0, out[0], TILE_ROWS):
        r1 = min(out[0], r0 + TILE_ROWS)
        rows = xp[:, :, r0 * s[0]: (r1 - 1) * s[0] + span]
        bands.append(_im2col(rows, w, s, (0, 0), d, (r1 - r0, out[1])))
    return torch.cat(bands, 2)


def _im2col_tiled_buffer(x_shape, w_shape, s, p, d) -> int:
    oh, ow = _outs(x_shape, w_shape, s, p, d)
    return x_shape[0] * w_shape[1] * w_shape[2] * w_shape[3] * min(oh, TILE_ROWS) * ow


register(Algorithm("im2col", _im2col, workspace_fn=_im2col_buffer))
register(Algorithm("im2col-tiled", _im2col_tiled, workspace_fn=_im2col_tiled_buffer))


# ----------------------------------------------------------------------------- fft

def _dilate(w: Tensor, d: Pair) -> Tensor:
    if d == (1, 1):
        return w
    K, C, kh, kw = w.shape
    out = w.new_zeros(K, C, (kh - 1) * d[0] + 1, (kw - 1) * d[1] + 1)
    out[:, :, :: d[0], :: d[1]] = w
    return out


def smooth(n: int) -> int:
    """The smallest 5-smooth number >= n (only factors 2, 3, 5), the sizes FFT libraries are fastest at:
    a 58-point transform (2 x 29) took 1.7x as long as a 60-point one here."""
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _fft(x, w, s, p, d, out):
    """Cross-correlation as a product of spectra: Y = X * conj(W) per frequency, summed over input
    channels by one batched complex matmul (frequencies as the batch). The transform size is at
    least the padded input's, so the valid part of the circular result is the linear one."""
    xp = F.pad(x, (p[1], p[1], p[0], p[0]))
    H, W = smooth(xp.shape[-2]), smooth(xp.shape[-1])
    wd = _dilate(w, d)
    X = torch.fft.rfft2(xp, s=(H, W))  # (N, C, H, W//2+1)
    Wf = torch.fft.rfft2(wd, s=(H, W))  # (K, C, H, W//2+1)
    N, C, fh, fw = X.shape
    Xm = X.permute(2, 3, 0, 1).reshape(fh * fw, N, C)
    Wm = Wf.conj().permute(2, 3, 1, 0).reshape(fh * fw, C, -1)
    Y = torch.matmul(Xm, Wm)  # (F, N, K): one batched complex GEMM
    Y = Y.reshape(fh, fw, N, -1).permute(2, 3, 0, 1)
    y = torch.fft.irfft2(Y, s=(H, W))
    return y[..., : out[0], : out[1]].contiguous()


def _fft_buffer(x_shape, w_shape, s, p, d) -> int:
    N, C, H, W = x_shape
    K = w_shape[0]
    H, W = H + 2 * p[0], W + 2 * p[1]
    freqs = smooth(H) * (smooth(W) // 2 + 1)
    return 2 * freqs * (N * C + K * C + N * K) + N * C * H * W  # complex spectra (2 floats each) + padded input


def _fft_mults(x_shape, w_shape, s, p, d) -> int:
    N, C, H, W = x_shape
    H, W = smooth(H + 2 * p[0]), smooth(W + 2 * p[1])
    return 4 * H * (W // 2 + 1) * N * C * w_shape[0]  # complex products: 4 real multiplications each


register(Algorithm("fft", _fft, strides=(1,), workspace_fn=_fft_buffer, mults_fn=_fft_mults))


# ----------------------------------------------------------------------------- winograd

def _winograd_matrices(m: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B^T, G, A^T) of F(m x m, 3 x 3) for cross-correlation (Lavin and Gray, 2015)."""
    if m == 2:
        BT = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        G = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        AT = [[1, 1, 1, 0], [0, 1, -1, -1]]
    else:
        BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    return tuple(torch.tensor(a, dtype=torch.float64) for a in (BT, G, AT))  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def _winograd_on(m: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The transform matrices made once per tile size, device and dtype (not copied to the device at
    every call)."""
    return tuple(t.to(device=device, dtype=dtype) for t in _winograd_matrices(m))  # type: ignore[return-value]


def _winograd(m: int):
    def fn(x, w, s, p, d, out):
        """Winograd F(m x m, 3 x 3): input tiles transformed, multiplied elementwise with the transformed
        kernels (fewer multiplications than direct), transformed back; 3x3 kernels, stride 1 only."""
        a = m + 2  # input tile size
        BT, G, AT = _winograd_on(m, x.device, x.dtype)
        th, tw = math.ceil(out[0] / m), math.ceil(out[1] / m)
        H, W = x.shape[-2:]
        xp = F.pad(x, (p[1], p[1] + tw * m + 2 - (W + 2 * p[1]), p[0], p[0] + th * m + 2 - (H + 2 * p[0])))
        tiles = xp.unfold(2, a, m).unfold(3, a, m)  # (N, C, th, tw, a, a)
        V = BT @ tiles @ BT.T  # input transform
        U = G @ w @ G.T  # kernel transform: (K, C, a, a)
        N, C = x.shape[:2]
        Vm = V.permute(4, 5, 0, 2, 3, 1).reshape(a * a, N * th * tw, C)
        Um = U.permute(2, 3, 1, 0).reshape(a * a, C, -1)
        M = torch.matmul(Vm, Um)  # (a*a, N*th*tw, K): one batched GEMM, a^2 products per tile and channel pair
        M = M.reshape(a, a, N, th, tw, -1).permute(2, 5, 3, 4, 0, 1)  # (N, K, th, tw, a, a)
        Y = AT @ M @ AT.T  # output transform: (N, K, th, tw, m, m)
        y = Y.permute(0, 1, 2, 4, 3, 5).reshape(N, -1, th * m, tw * m)
        return y[..., : out[0], : out[1]].contiguous()

    return fn


def _winograd_mults(m: int):
    def count(x_shape, w_shape, s, p, d) -> int:
        oh, ow = _outs(x_shape, w_shape, s, p, d)
        return x_shape[0] * math.ceil(oh / m) * math.ceil(ow / m) * (m + 2) ** 2 * w_shape[0] * w_shape[1]

    return count


def _winograd_buffer(m: int):
    def size(x_shape, w_shape, s, p, d) -> int:
        oh, ow = _outs(x_shape, w_shape, s, p, d)
        tiles = x_shape[0] * math.ceil(oh / m) * math.ceil(ow / m)
        return (m + 2) ** 2 * (tiles * x_shape[1] + w_shape[0] * w_shape[1] + tiles * w_shape[0])

    return size


for _m in (2, 4):
    register(Algorithm(f"winograd-{_m}x{_m}", _winograd(_m), strides=(1,), dilations=(1,), kernels=(3,),
                       workspace_fn=_winograd_buffer(_m), mults_fn=_winograd_mults(_m)))
