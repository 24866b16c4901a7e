"""The test-time views: pure, deterministic functions of a batch (B, C, H, W) -> (V * B, C, H, W),
view-major, keeping size and dtype. Geometry reuses the augmentation ops' gather (`translate`), so a
test-time shift is exactly a training-time shift with a fixed offset.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from cnnlab.augment.ops import PadMode, like_input, check_batch, translate
from cnnlab.tta import VIEWS

Px = Annotated[int, Field(ge=1)]
Factor = Annotated[float, Field(gt=0, le=4)]


def shifted(x: Tensor, offsets: list[tuple[int, int]], pad_mode: str = "zero",
            size: tuple[int, int] | None = None) -> Tensor:
    """One view per (dy, dx): out[r, c] = x[r + dy, c + dx] for r, c inside `size` (default: the
    input's), outside the image filled per `pad_mode`; all views in one gather, view-major."""
    B = x.shape[0]
    H, W = size or x.shape[-2:]
    dy = torch.tensor([o[0] for o in offsets], device=x.device).repeat_interleave(B)
    dx = torch.tensor([o[1] for o in offsets], device=x.device).repeat_interleave(B)
    reach = (int(dy.min()), int(dy.max()), int(dx.min()), int(dx.max()))
    return translate(x.repeat(len(offsets), 1, 1, 1), dy, dx, H, W, pad_mode, reach)


def _fits(x: Tensor, px: int, what: str) -> None:
    H, W = x.shape[-2:]
    if 2 * px >= min(H, W):
        raise ValueError(f"{what} {px} px is half or more of the {H}x{W} image: its views would show "
                         f"less than half of it; use a value below {(min(H, W) + 1) // 2}")


@VIEWS.register("identity")
def identity(x: Tensor) -> Tensor:
    """The image as it is: the single view every policy is measured against."""
    check_batch(x)
    return x


@VIEWS.register("hflip")
def hflip(x: Tensor) -> Tensor:
    """The image and its mirror left-right (W, the last axis of NCHW): 2 views."""
    check_batch(x)
    return torch.cat([x, x.flip(-1)])


@VIEWS.register("translate")
def translate_views(x: Tensor, px: Px = 2, pad_mode: PadMode = "zero") -> Tensor:
    """The image and its shifts by `px` pixels up, down, left and right: 5 views."""
    check_batch(x)
    _fits(x, px, "a shift of")
    return shifted(x, [(0, 0), (-px, 0), (px, 0), (0, -px), (0, px)], pad_mode)


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    """Bilinear resize (antialiased when shrinking), back to the input's dtype."""
    out = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False,
                        antialias=h < x.shape[-2] or w < x.shape[-1])
    return like_input(out, x)


def _corners_and_centre(x: Tensor, pad: int, mode: str, pad_mode: str) -> Tensor:
    """Five H x W crops (centre, top-left, top-right, bottom-left, bottom-right) of the image grown
    by `pad` px on every side: padded (`mode: pad`), or resized up (`mode: resize`)."""
    H, W = x.shape[-2:]
    corners = [(0, 0), (-pad, -pad), (-pad, pad), (pad, -pad), (pad, pad)]  # offsets from the centre crop
    if mode == "pad":
        return shifted(x, corners, pad_mode)
    big = _resize(x, H + 2 * pad, W + 2 * pad)
    views = [big[..., pad + dy:pad + dy + H, pad + dx:pad + dx + W] for dy, dx in corners]
    return torch.cat(views)


@VIEWS.register("five-crop")
def five_crop(x: Tensor, pad: Px = 2, mode: Literal["pad", "resize"] = "pad",
              pad_mode: PadMode = "zero") -> Tensor:
    """The centre and the four corner crops, at the image's own size, cut from the image padded by
    `pad` px on every side (`mode: pad`, as training's pad-and-crop) or resized up by 2 x `pad` px
    (`mode: resize`): 5 views."""
    check_batch(x)
    _fits(x, pad, "a margin of")
    return _corners_and_centre(x, pad, mode, pad_mode)


@VIEWS.register("ten-crop")
def ten_crop(x: Tensor, pad: Px = 2, mode: Literal["pad", "resize"] = "pad",
             pad_mode: PadMode = "zero") -> Tensor:
    """five-crop and the mirror image (along W) of each crop: 10 views."""
    check_batch(x)
    _fits(x, pad, "a margin of")
    crops = _corners_and_centre(x, pad, mode, pad_mode)
    return torch.cat([crops, crops.flip(-1)])


@VIEWS.register("scales")
def scales(x: Tensor, factors: Annotated[list[Factor], Field(min_length=1)] = [0.9, 1.0, 1.1],
           pad_mode: PadMode = "zero") -> Tensor:
    """The image resized by each factor about its centre, back at its own size: a larger image is
    centre-cropped, a smaller one padded (`pad_mode`). One view per factor."""
    check_batch(x)
    H, W = x.shape[-2:]
    if len(set(factors)) != len(factors):
        raise ValueError(f"factors must be distinct, got {factors}")
    views = []
    for f in factors:
        h, w = round(H * f), round(W * f)
        if min(h, w) < 2:
            raise ValueError(f"factor {f:g} shrinks the {H}x{W} image below 2 px")
        if (h, w) == (H, W):
            views.append(x)
            continue
        top, left = (h - H) // 2, (w - W) // 2  # > 0: a centre crop; < 0: padding
        views.append(shifted(_resize(x, h, w), [(top, left)], pad_mode, (H, W)))
    return torch.cat(views)
