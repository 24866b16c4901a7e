"""Augmentation ops: pure batch functions `op(x, g, **params)` on (B, C, H, W) images, by name."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from cnnlab.registry import Registry

OPS: Registry[Callable[..., Tensor]] = Registry("augmentation op")
OP_SKIP = frozenset({"x", "g"})  # supplied by the pipeline, not by the recipe


def build_pipeline(ops: list[dict[str, Any]]) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """The recipe's `augment.ops` as one function of a batch, or None when there are no ops."""
    from cnnlab.recipe import check_kwargs

    steps = []
    for op in ops:
        fn = OPS.get(op["name"])
        kwargs = check_kwargs(fn, {k: v for k, v in op.items() if k != "name"}, OP_SKIP)
        steps.append((fn, kwargs))
    if not steps:
        return None

    def pipeline(x: Tensor, g: torch.Generator) -> Tensor:
        for fn, kwargs in steps:
            x = fn(x, g=g, **kwargs)
        return x

    return pipeline
