"""The lecture's stacking choices as blocks, and VGG-style nets whose every stage is one block type,
so that `cnnlab train` can compare them: one 7x7 convolution, three stacked 3x3 convolutions (the
same 7x7 receptive field, 27C^2 weights instead of 49C^2, three non-linearities instead of one), or
a 1x1 -> 3x3 -> 1x1 bottleneck (ResNet's, at a quarter of the channels in the middle)."""
from __future__ import annotations

from typing import Annotated, Callable

from pydantic import Field
from torch import nn

from cnnlab.models.registry import MODELS
from cnnlab.models.small import StagedNet, Width
from cnnlab.registry import Registry

# (c_in, c_out, norm) -> the block: bias-free convolutions, each followed by BatchNorm when `norm`, and a ReLU
BLOCKS: Registry[Callable[[int, int, bool], nn.Sequential]] = Registry("stacking block")


def conv_act(c_in: int, c_out: int, k: int, norm: bool) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), *([nn.BatchNorm2d(c_out)] if norm else []),
            nn.ReLU(inplace=True)]


@BLOCKS.register("7x7")
def one_7x7(c_in: int, c_out: int, norm: bool = False) -> nn.Sequential:
    """One 7x7 conv(+BN)+ReLU: a 7x7 receptive field in one layer."""
    return nn.Sequential(*conv_act(c_in, c_out, 7, norm))


@BLOCKS.register("3x3x3")
def three_3x3(c_in: int, c_out: int, norm: bool = False) -> nn.Sequential:
    """Three 3x3 conv(+BN)+ReLU: the same 7x7 receptive field, fewer weights, three non-linearities."""
    return nn.Sequential(*conv_act(c_in, c_out, 3, norm), *conv_act(c_out, c_out, 3, norm),
                         *conv_act(c_out, c_out, 3, norm))


@BLOCKS.register("bottleneck")
def bottleneck(c_in: int, c_out: int, norm: bool = False) -> nn.Sequential:
    """1x1 down to c_out/4, 3x3 at c_out/4, 1x1 up to c_out."""
    m = max(1, c_out // 4)
    return nn.Sequential(*conv_act(c_in, m, 1, norm), *conv_act(m, m, 3, norm), *conv_act(m, c_out, 1, norm))


def stacked_net(block: str, in_channels: int, num_classes: int, widths: list[int], dropout: float) -> StagedNet:
    """One `block` per stage at `widths[i]` channels, 2x2 max-pool between stages, as vgg-small."""
    stages, c = [], in_channels
    for i, w in enumerate(widths):
        stages.append(nn.Sequential(*([nn.MaxPool2d(2)] if i > 0 else []), *BLOCKS.get(block)(c, w, True)))
        c = w
    return StagedNet(stages, c, num_classes, dropout)


Dropout = Annotated[float, Field(ge=0, lt=1)]


@MODELS.register("vgg-7x7")
def vgg_7x7(in_channels: int, num_classes: int, widths: list[Width] = [32, 64, 128], dropout: Dropout = 0.0) -> StagedNet:
    """Each stage one 7x7 conv+BN+ReLU."""
    return stacked_net("7x7", in_channels, num_classes, widths, dropout)


@MODELS.register("vgg-3x3x3")
def vgg_3x3x3(in_channels: int, num_classes: int, widths: list[Width] = [32, 64, 128], dropout: Dropout = 0.0) -> StagedNet:
    """Each stage three 3x3 conv+BN+ReLU: the 7x7's receptive field with fewer weights."""
    return stacked_net("3x3x3", in_channels, num_classes, widths, dropout)


@MODELS.register("vgg-bottleneck")
def vgg_bottleneck(in_channels: int, num_classes: int, widths: list[Width] = [32, 64, 128],
                   dropout: Dropout = 0.0) -> StagedNet:
    """Each stage a 1x1 -> 3x3 -> 1x1 bottleneck (conv+BN+ReLU each) at a quarter of the width inside."""
    return stacked_net("bottleneck", in_channels, num_classes, widths, dropout)
