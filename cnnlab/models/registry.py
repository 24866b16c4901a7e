from __future__ import annotations

from typing import Any, Callable

from torch import nn

from cnnlab.registry import Registry

# in_channels and num_classes come from the data, never from a recipe
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", supplied={"in_channels", "num_classes"})


def build_model(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model; recipe kwargs are validated against the builder's signature."""
    fn = MODELS.get(name)
    return fn(in_channels=in_channels, num_classes=num_classes, **MODELS.check_kwargs(fn, kwargs))
