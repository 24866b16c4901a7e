from __future__ import annotations

from typing import Any, Callable

from torch import nn

from cnnlab.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODEL_SKIP = frozenset({"in_channels", "num_classes"})  # filled in from the data, not the recipe


def build_model(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model; recipe kwargs are validated against the builder's signature."""
    from cnnlab.recipe import check_kwargs

    fn = MODELS.get(name)
    return fn(in_channels=in_channels, num_classes=num_classes, **check_kwargs(fn, kwargs, MODEL_SKIP))
