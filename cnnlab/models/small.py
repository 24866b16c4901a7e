"""Small from-scratch nets for 8-32 px inputs: stacks of 3x3 convolutions (VGG) and residual blocks."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from cnnlab.errors import UserError
from cnnlab.models.registry import MODELS

Width = Annotated[int, Field(ge=1)]


class StagedNet(nn.Module):
    """`stages` (each halving the resolution after the first) then `head`; `features` taps every
    stage, which transfer learning uses to freeze or read stages by index."""

    def __init__(self, stages: list[nn.Module], width: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(width, num_classes))

    def features(self, x: Tensor) -> list[Tensor]:
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(x)  # (B, C_i, H / 2^i, W / 2^i)
        return taps

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


@MODELS.register("vgg-small")
def vgg_small(in_channels: int, num_classes: int, widths: list[Width] = [32, 64, 128],
              depth: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] = 2,
              dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> StagedNet:
    """VGG-style: per stage `depth` 3x3 conv+BN+ReLU at `widths[i]` channels (one depth for every
    stage, or one per stage: [1, 2, 2] keeps the full-resolution stage cheap); 2x2 max-pool between
    stages; global average pool and a linear classifier."""
    depths = depth if isinstance(depth, list) else [depth] * len(widths)
    if len(depths) != len(widths):
        raise UserError(f"model.depth: one depth per stage, {len(widths)} widths {widths} and {len(depths)} depths {depths}")
    stages, c = [], in_channels
    for i, (w, d) in enumerate(zip(widths, depths)):
        layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
        for _ in range(d):
            layers.append(conv_bn(c, w))
            c = w
        stages.append(nn.Sequential(*layers))
    return StagedNet(stages, c, num_classes, dropout)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


@MODELS.register("resnet-small")
def resnet_small(in_channels: int, num_classes: int, widths: list[Width] = [16, 32, 64],
                 blocks: Annotated[int, Field(ge=1)] = 2,
                 dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> StagedNet:
    """CIFAR-style ResNet for 28-32 px: a 3x3 stem, `blocks` basic blocks per stage, stride 2
    at the start of every stage after the first."""
    stages, c = [], widths[0]
    for i, w in enumerate(widths):
        layers: list[nn.Module] = [conv_bn(in_channels, c)] if i == 0 else []
        for b in range(blocks):
            layers.append(BasicBlock(c, w, 2 if i > 0 and b == 0 else 1))
            c = w
        stages.append(nn.Sequential(*layers))
    return StagedNet(stages, c, num_classes, dropout)
