"""`torchvision:<name>`: any torchvision classifier, random init or weights from a local file."""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor, nn

from cnnlab.errors import UserError
from cnnlab.models.registry import MODELS
from cnnlab.models.weights import load_into, load_state_dict_file
from cnnlab.registry import did_you_mean


class ToRGB(nn.Module):
    """Repeat a 1-channel input to the 3 channels an RGB backbone expects."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def replace_classifier(net: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last nn.Linear for a fresh one with `num_classes` outputs."""
    last = None
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise UserError(f"{type(net).__name__} has no linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return net


def _torchvision(name: str) -> Callable[..., nn.Module]:
    """Any torchvision classifier by name (torchvision:resnet18), random init or `weights` from a
    local file, its classifier replaced for the data's classes."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise KeyError(f"'torchvision:{name}' is not a torchvision classifier{did_you_mean(name, names)}")
    return _builder(name)


@functools.lru_cache(maxsize=None)
def _builder(name: str) -> Callable[..., nn.Module]:
    import torchvision

    def build(in_channels: int, num_classes: int, weights: str | None = None) -> nn.Module:
        """`weights`: a local state-dict file (e.g. from the torch hub cache); None = random init."""
        if weights is None:
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        else:
            net = torchvision.models.get_model(name, weights=None)
            sd = load_state_dict_file(weights)
            load_into(net, sd, f"model.weights: {weights} does not fit torchvision:{name}")
            if num_classes != net.state_dict()[next(k for k in reversed(sd) if k.endswith('.weight'))].shape[0]:
                replace_classifier(net, num_classes)
        if in_channels not in (1, 3):
            raise UserError(f"torchvision:{name} takes 1- or 3-channel images, the data has {in_channels}")
        return ToRGB(net) if in_channels == 1 else net

    build.__name__ = f"torchvision_{name}"
    return build


MODELS.register_prefix("torchvision", _torchvision)
