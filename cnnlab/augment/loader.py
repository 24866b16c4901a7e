"""`augment.where: loader`: the same ops as per-sample torchvision `transforms.v2`, run inside
DataLoader workers. For comparison with device mode, and for data that cannot sit in memory."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

from cnnlab.augment import Pipeline

PADDING_MODE = {"zero": "constant", "reflect": "reflect", "edge": "edge"}


class PerSample:
    """An op with no torchvision twin, applied to one image (draws from the worker's global RNG)."""

    def __init__(self, fn: Callable[..., Tensor], kwargs: dict[str, Any]):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, im: Tensor) -> Tensor:
        return self.fn(im.unsqueeze(0), g=None, **self.kwargs)[0]


def _twin(name: str, fn: Callable, kw: dict[str, Any], hw: tuple[int, int]) -> list[Callable]:
    if name == "shift":
        return [v2.RandomCrop(hw, padding=kw["max_px"], padding_mode=PADDING_MODE[kw["pad_mode"]])]
    if name == "crop":
        size = (kw["size"], kw["size"]) if kw["size"] else hw
        return [v2.RandomCrop(size, padding=kw["padding"], padding_mode=PADDING_MODE[kw["pad_mode"]])]
    if name == "hflip":
        return [v2.RandomHorizontalFlip(kw["p"])]
    if name == "resized_crop":
        return [v2.RandomResizedCrop(kw["size"], scale=kw["scale"], ratio=kw["ratio"], antialias=False)]
    if name == "color_jitter":  # one ColorJitter per property keeps device mode's fixed order
        return [v2.ColorJitter(**{k: kw[k]}) for k in ("brightness", "contrast", "saturation", "hue") if kw[k] > 0]
    if name == "cutout":
        return [v2.RandomErasing(p=kw["p"], scale=kw["scale"], ratio=kw["ratio"], value=round(kw["value"] * 255))]
    return [PerSample(fn, kw)]


def per_sample_transform(pipeline: Pipeline, image_hw: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """A v2.Compose equivalent to `pipeline` for single uint8 (C, H, W) images."""
    return v2.Compose([t for name, fn, kw in pipeline.steps for t in _twin(name, fn, kw, image_hw)])
