"""Augmentation ops: pure functions of a batch (B, C, H, W), uint8 or float, and a generator.

Every op draws its random parameters per sample from `g` (on the batch's device), keeps dtype,
shape (except `crop`/`resized_crop` with an explicit size) and value range, and never sees labels.
The same code runs on CPU and GPU.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from cnnlab.augment import OPS

Prob = Annotated[float, Field(ge=0, le=1)]
NonNeg = Annotated[float, Field(ge=0)]
PadMode = Literal["zero", "reflect", "edge"]


def check_batch(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _source_index(i: Tensor, size: int, mode: str) -> tuple[Tensor, Tensor]:
    """Map wanted source coordinates `i` (any integers) into [0, size) by `mode`; also a validity
    mask (False where zero padding applies)."""
    valid = (i >= 0) & (i < size)
    if mode == "edge":
        i = i.clamp(0, size - 1)
    elif mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...  (no edge repeat, like np 'reflect')
        period = 2 * (size - 1) if size > 1 else 1
        i = i.remainder(period)
        i = torch.where(i >= size, period - i, i)
        valid = torch.ones_like(valid)
    else:
        i = i.clamp(0, size - 1)
    return i, valid


def _pad(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad H and W of (B, C, H, W) by index maps (works for every dtype, incl. uint8)."""
    if mode == "zero":
        return F.pad(x, (left, right, top, bottom))
    H, W = x.shape[-2:]
    rows, _ = _source_index(torch.arange(-top, H + bottom, device=x.device), H, mode)
    cols, _ = _source_index(torch.arange(-left, W + right, device=x.device), W, mode)
    return x.index_select(2, rows).index_select(3, cols)


def translate(x: Tensor, dy: Tensor, dx: Tensor, out_h: int, out_w: int, pad_mode: str,
              reach: tuple[int, int, int, int]) -> Tensor:
    """out[b, :, r, c] = x[b, :, r + dy[b], c + dx[b]], outside the image filled per `pad_mode`.
    `reach` = (min dy, max dy, min dx, max dx) the draws can take. Pads once, then one gather over
    each flattened padded image: a window is the same index grid moved by one offset per sample."""
    B, C, H, W = x.shape
    ylo, yhi, xlo, xhi = reach
    top, left = max(0, -ylo), max(0, -xlo)
    xp = _pad(x, top, max(0, yhi + out_h - H), left, max(0, xhi + out_w - W), pad_mode)  # (B, C, Hp, Wp)
    Wp = xp.shape[-1]
    rows = torch.arange(out_h, device=x.device) + ylo + top
    cols = torch.arange(out_w, device=x.device) + xlo + left
    grid = (rows.view(-1, 1) * Wp + cols.view(1, -1)).view(1, 1, -1)  # window at the smallest offsets
    index = grid + ((dy - ylo) * Wp + (dx - xlo)).view(-1, 1, 1)  # (B, 1, out_h*out_w)
    return xp.reshape(B, C, -1).gather(2, index.expand(B, C, -1)).view(B, C, out_h, out_w)


@OPS.register("shift")
def shift(x: Tensor, g: torch.Generator, max_px: Annotated[int, Field(ge=0)] = 2, pad_mode: PadMode = "zero") -> Tensor:
    """Translate each image by a uniform integer offset in [-max_px, max_px] on each axis; pixel
    values are moved, never interpolated."""
    check_batch(x)
    if max_px == 0:
        return x
    B, _, H, W = x.shape
    dy = torch.randint(-max_px, max_px + 1, (B,), generator=g, device=x.device)
    dx = torch.randint(-max_px, max_px + 1, (B,), generator=g, device=x.device)
    return translate(x, dy, dx, H, W, pad_mode, (-max_px, max_px, -max_px, max_px))


@OPS.register("hflip")
def hflip(x: Tensor, g: torch.Generator, p: Prob = 0.5) -> Tensor:
    """Mirror each image left-right (the W axis, dim -1 of NCHW) with probability p."""
    check_batch(x)
    flip = torch.nonzero(torch.rand(x.shape[0], generator=g, device=x.device) < p).flatten()
    if len(flip) == 0:
        return x
    return x.index_copy(0, flip, x.index_select(0, flip).flip(-1))  # touch only the flipped images


@OPS.register("crop")
def crop(x: Tensor, g: torch.Generator, padding: Annotated[int, Field(ge=0)] = 4,
         size: Annotated[int, Field(ge=1)] | None = None, pad_mode: PadMode = "zero") -> Tensor:
    """Pad by `padding`, then take a random `size` x `size` window (default: the input size),
    every position equally likely: torchvision's RandomCrop(size, padding)."""
    check_batch(x)
    B, _, H, W = x.shape
    oh, ow = (size, size) if size else (H, W)
    if oh > H + 2 * padding or ow > W + 2 * padding:
        raise ValueError(f"crop size {oh}x{ow} is larger than the padded image {H + 2 * padding}x{W + 2 * padding}")
    if padding == 0 and (oh, ow) == (H, W):
        return x
    ny, nx = H + 2 * padding - oh, W + 2 * padding - ow  # largest window offsets in the padded image
    top = torch.randint(0, ny + 1, (B,), generator=g, device=x.device) - padding
    left = torch.randint(0, nx + 1, (B,), generator=g, device=x.device) - padding
    return translate(x, top, left, oh, ow, pad_mode, (-padding, ny - padding, -padding, nx - padding))


def _boxes(B: int, H: int, W: int, scale: tuple[float, float], ratio: tuple[float, float],
           g: torch.Generator, device: torch.device, tries: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """RandomResizedCrop's box sampling, vectorised: up to `tries` draws of (area, log-ratio) per
    sample, first that fits wins; (h, w, found) per sample."""
    area = H * W * _uniform(B * tries, *scale, g, device).view(B, tries)
    logr = _uniform(B * tries, math.log(ratio[0]), math.log(ratio[1]), g, device).view(B, tries)
    ar = torch.exp(logr)
    w = torch.sqrt(area * ar).round().long()
    h = torch.sqrt(area / ar).round().long()
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(B, dtype=torch.long, device=device))
    pick = lambda t: t.gather(1, first.view(-1, 1)).squeeze(1)  # noqa: E731
    return pick(h), pick(w), ok.any(1)


@OPS.register("resized_crop")
def resized_crop(x: Tensor, g: torch.Generator, size: Annotated[int, Field(ge=1)] = 28,
                 scale: tuple[Prob, Prob] = (0.35, 1.0),
                 ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (3 / 4, 4 / 3)) -> Tensor:
    """Random area fraction in `scale` and aspect ratio in `ratio` (log-uniform), resized to
    size x size with bilinear sampling: torchvision's RandomResizedCrop, batched."""
    check_batch(x)
    B, C, H, W = x.shape
    h, w, found = _boxes(B, H, W, scale, ratio, g, x.device)
    # fallback as torchvision: the whole image, cropped to the nearest allowed ratio
    in_ratio = W / H
    fw, fh = (W, H)
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(H * max(ratio))), H
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    top = (torch.rand(B, generator=g, device=x.device) * (H - h + 1)).floor()
    left = (torch.rand(B, generator=g, device=x.device) * (W - w + 1)).floor()
    top = torch.where(found, top, ((H - h) / 2).floor().to(top.dtype))
    left = torch.where(found, left, ((W - w) / 2).floor().to(left.dtype))
    # affine grid in normalised coordinates [-1, 1] (align_corners=False): box centre and half-size
    cx = (left + w / 2) / W * 2 - 1
    cy = (top + h / 2) / H * 2 - 1
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w / W, cx
    theta[:, 1, 1], theta[:, 1, 2] = h / H, cy
    grid = F.affine_grid(theta, [B, C, size, size], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return like_input(out, x)


def like_input(out: Tensor, ref: Tensor) -> Tensor:
    """Back to the input's dtype (uint8: round and clamp to 0..255)."""
    if ref.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(ref.dtype)


def _gray(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of RGB (ITU-R 601), or the image itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    r, gr, b = x.unbind(1)
    return (0.299 * r + 0.587 * gr + 0.114 * b).unsqueeze(1)


@OPS.register("color_jitter")
def color_jitter(x: Tensor, g: torch.Generator, brightness: NonNeg = 0.0, contrast: NonNeg = 0.0,
                 saturation: NonNeg = 0.0, hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0) -> Tensor:
    """Per-image factors uniform in [1-s, 1+s] for brightness, contrast, saturation, and a hue
    rotation uniform in [-hue, hue] turns, applied in that order (torchvision's formulas, in one
    float buffer; uint8 results are truncated as torchvision's are).
    Saturation and hue leave 1-channel images unchanged: grey has no colour to change."""
    check_batch(x)
    B = x.shape[0]
    if brightness == contrast == saturation == hue == 0:
        return x
    peak = 255.0 if x.dtype == torch.uint8 else 1.0
    y = x.to(torch.float32, copy=True)  # every step below works in place on this one buffer
    view = (B, 1, 1, 1)
    if brightness > 0:
        f = _uniform(B, max(0.0, 1 - brightness), 1 + brightness, g, x.device).view(view)
        y.mul_(f).clamp_max_(peak)  # f >= 0 and y >= 0: only the top can overflow
    if contrast > 0:
        f = _uniform(B, max(0.0, 1 - contrast), 1 + contrast, g, x.device).view(view)
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y.mul_(f).add_((1 - f) * mean).clamp_(0, peak)
    if x.shape[1] == 3 and saturation > 0:
        f = _uniform(B, max(0.0, 1 - saturation), 1 + saturation, g, x.device).view(view)
        y.mul_(f).add_((1 - f) * _gray(y)).clamp_(0, peak)
    if x.shape[1] == 3 and hue > 0:
        y = _rotate_hue(y / peak, _uniform(B, -hue, hue, g, x.device)) * peak
    return y.to(x.dtype)  # uint8: truncated, as torchvision's colour adjustments do


def _rotate_hue(rgb: Tensor, turns: Tensor) -> Tensor:
    """Shift hue by `turns` (fraction of the colour wheel) per image, via HSV."""
    r, gr, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (gr - b) / d, torch.where(maxc == gr, 2 + (b - r) / d, 4 + (r - gr) / d))
    h = torch.where(delta > 0, (h / 6).remainder(1.0), torch.zeros_like(h))
    h = (h + turns.view(-1, 1, 1)).remainder(1.0)
    i = (h * 6).floor()
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long().remainder(6).unsqueeze(1)
    choices = torch.stack([torch.stack(c, 1) for c in
                           ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)  # (6, B, 3, H, W)
    return choices.gather(0, i.unsqueeze(0).expand(1, -1, 3, -1, -1)).squeeze(0)


def pca_basis(images: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the channel covariance of uint8
    images, in [0, 1] pixel units: the 'fancy PCA' basis, computed once from the training split."""
    px = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N*H*W)
    cov = torch.cov(px.double()).reshape(px.shape[0], px.shape[0])  # (C, C), also for C = 1
    vals, vecs = torch.linalg.eigh(cov)  # ascending
    return vals.flip(0).clamp_min(0).float(), vecs.flip(1).float()


@OPS.register("pca_jitter")
def pca_jitter(x: Tensor, g: torch.Generator, alpha_std: NonNeg = 0.1,
               eigvals: Tensor | None = None, eigvecs: Tensor | None = None) -> Tensor:
    """AlexNet's lighting noise: add sum_i a_i * sqrt(lambda_i) * p_i to every pixel of an image,
    a_i ~ N(0, alpha_std^2) per image, (lambda_i, p_i) the training split's channel-covariance
    eigenpairs. The noise along each eigenvector has std alpha_std * sqrt(lambda_i): a fraction of
    the data's own colour spread along that axis (lambda is a variance, sqrt makes it pixel units).
    `eigvals`/`eigvecs` are fitted from the data by the pipeline, not given in recipes."""
    check_batch(x)
    if alpha_std == 0:
        return x
    if eigvals is None or eigvecs is None:
        raise ValueError("pca_jitter needs eigvals/eigvecs: build it through augment.build_pipeline with the training images")
    B, C = x.shape[:2]
    alpha = torch.randn(B, C, generator=g, device=x.device) * alpha_std  # Gaussian, as in AlexNet
    vals, vecs = eigvals.to(x.device), eigvecs.to(x.device)
    delta = (alpha * vals.sqrt()) @ vecs.T  # (B, C): sum_i a_i sqrt(l_i) p_i
    peak = 255.0 if x.dtype == torch.uint8 else 1.0
    return like_input((x.float() + delta.view(B, C, 1, 1) * peak).clamp_(0, peak), x)


pca_jitter.fitted = ("eigvals", "eigvecs")  # type: ignore[attr-defined]
pca_jitter.fit = lambda images: dict(zip(("eigvals", "eigvecs"), pca_basis(images)))  # type: ignore[attr-defined]


@OPS.register("cutout")
def cutout(x: Tensor, g: torch.Generator, p: Prob = 0.5, scale: tuple[Prob, Prob] = (0.02, 0.33),
           ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.3, 3.3),
           value: NonNeg = 0.0) -> Tensor:
    """Random erasing: with probability p, fill one rectangle (area fraction in `scale`, aspect in
    `ratio`, log-uniform) with `value` (0..1 of full scale): torchvision's RandomErasing, batched."""
    check_batch(x)
    B, C, H, W = x.shape
    if p == 0:
        return x
    h, w, found = _boxes(B, H, W, scale, ratio, g, x.device)
    top = (torch.rand(B, generator=g, device=x.device) * (H - h + 1)).floor().long()
    left = (torch.rand(B, generator=g, device=x.device) * (W - w + 1)).floor().long()
    erase = found & (torch.rand(B, generator=g, device=x.device) < p)
    r = torch.arange(H, device=x.device).view(1, -1, 1)
    c = torch.arange(W, device=x.device).view(1, 1, -1)
    box = ((r >= top.view(-1, 1, 1)) & (r < (top + h).view(-1, 1, 1)) &
           (c >= left.view(-1, 1, 1)) & (c < (left + w).view(-1, 1, 1)) & erase.view(-1, 1, 1))
    fill = torch.tensor(value * (255 if x.dtype == torch.uint8 else 1), dtype=x.dtype, device=x.device)
    return torch.where(box.unsqueeze(1), fill, x)
