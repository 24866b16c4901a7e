"""Augmentation ops: pure batch functions `op(x, g, **params)` on (B, C, H, W) images, by name.

Ops whose parameters come from the data (PCA lighting's eigenpairs) carry `fitted` (the names of
those parameters) and `fit(train_images) -> dict`; recipes never set them.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from cnnlab.registry import Registry

# the batch, the generator and the fitted parameters come from the pipeline, never from a recipe
OPS: Registry[Callable[..., Tensor]] = Registry("augmentation op",
                                                supplied=lambda fn: {"x", "g", *getattr(fn, "fitted", ())})


class Pipeline:
    """The recipe's `augment.ops`, resolved: one call per batch, draws from an explicit generator."""

    def __init__(self, ops: list[dict[str, Any]], train_images: Tensor | None = None):
        self.steps: list[tuple[str, Callable[..., Tensor], dict[str, Any]]] = []
        self.fitted: dict[str, dict[str, Tensor]] = {}
        for i, op in enumerate(ops):
            fn = OPS.get(op["name"])
            kwargs = OPS.check_kwargs(fn, {k: v for k, v in op.items() if k != "name"})
            if hasattr(fn, "fit"):
                if train_images is None:
                    raise ValueError(f"augment op '{op['name']}' is fitted to the training images; pass them")
                self.fitted[f"{i}:{op['name']}"] = fit = fn.fit(train_images)
                kwargs.update(fit)
            self.steps.append((op["name"], fn, kwargs))
        if train_images is not None and len(train_images):
            self._try(train_images[:2])

    def _try(self, x: Tensor) -> None:
        """Run every op once on real images so a setting that does not fit the data (a crop
        larger than the padded image, say) is a recipe error before any training starts."""
        from cnnlab.errors import UserError

        g = torch.Generator().manual_seed(0)
        for i, (name, fn, kwargs) in enumerate(self.steps):
            try:
                x = fn(x, g=g, **kwargs)
            except ValueError as e:
                raise UserError(f"augment.ops.{i} ({name}): {e}") from None

    def __len__(self) -> int:
        return len(self.steps)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        for _, fn, kwargs in self.steps:
            x = fn(x, g=g, **kwargs)
        return x


def build_pipeline(ops: list[dict[str, Any]], train_images: Tensor | None = None) -> Pipeline | None:
    """The recipe's `augment.ops` as one function of a batch, or None when there are no ops."""
    pipe = Pipeline(ops, train_images)
    return pipe if len(pipe) else None


from cnnlab.augment import ops as _ops  # noqa: E402,F401  (registration)
