"""The fine-tuning regimes of the lecture, as named pure functions `(n_stages, spec) -> Plan`, and the
net they act on: a backbone's stages plus a fresh linear head on pooled stage taps.

    regime   frozen stages              head reads      lecture's case
    linear   all                        last stage      similar data, little of it
    top      all but the top `top_k`    last stage      similar data, lots of it
    stages   all                        `stages` taps   different data, little of it
    full     none                       last stage      different data, lots of it
    lp-ft    none, after an exact probe last stage      (Kumar et al. 2022) the probe's head, then full at lower lr
    scratch  none, random init          last stage      the baseline every regime must beat
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cnnlab.errors import UserError
from cnnlab.registry import Registry
from cnnlab.transfer.backbones import Backbone


@dataclass(frozen=True)
class Plan:
    regime: str
    frozen: frozenset[int]  # stages never trained: requires_grad False, held in eval mode (BN stats fixed)
    taps: tuple[int, ...]  # stages whose globally pooled output feeds the linear head, concatenated
    lr_scale: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> lr multiplier
    warm: frozenset[int] = frozenset()  # trained stages that stay frozen for the first `freeze_epochs`
    pretrained: bool = True  # False: the same architecture from random init
    probe_first: bool = False  # the head starts as the exact linear probe of the frozen features (lp-ft)

    @property
    def cached(self) -> bool:
        """Every stage the head reads is frozen for the whole run: features can be computed once."""
        return self.pretrained and set(range(max(self.taps) + 1)) <= self.frozen


REGIMES: Registry = Registry("fine-tuning regime")


def stage_lr(n: int, trained: range, spec) -> dict[str, float]:
    """Discriminative learning rates: stage i trains at backbone_lr_mult * layer_decay**(n-1-i) of
    optim.lr (the top stage at backbone_lr_mult, each lower one layer_decay times less); head at 1."""
    return {f"stages.{i}.": spec.backbone_lr_mult * spec.layer_decay ** (n - 1 - i) for i in trained}


@REGIMES.register("linear")
def linear(n: int, spec) -> Plan:
    """The whole backbone frozen; a linear head on its last stage's pooled features (a linear probe)."""
    return Plan("linear", frozenset(range(n)), (n - 1,))


def stage_taps(stages: list[int] | None, n: int, backbone: str = "the backbone") -> tuple[int, ...]:
    """`finetune.stages` as sorted stage indices of an n-stage backbone (None: all; negative indices
    count from the end); an index out of range or a stage named twice is a UserError."""
    if stages is None:
        return tuple(range(n))
    where = f"{backbone} has {n} stages: 0..{n - 1}, or -{n}..-1 from the end"
    for i in stages:
        if not -n <= i < n:
            raise UserError(f"finetune.stages: {i} is out of range; {where}")
    idx = [i % n for i in stages]
    twice = next((i for i in idx if idx.count(i) > 1), None)
    if twice is not None:
        raise UserError(f"finetune.stages: {stages} names stage {twice} twice; {where}")
    return tuple(sorted(idx))


@REGIMES.register("stages")
def stages(n: int, spec) -> Plan:
    """The whole backbone frozen; a linear head on the pooled features of the stages `finetune.stages` names."""
    return Plan("stages", frozenset(range(n)), stage_taps(spec.stages, n))


@REGIMES.register("top")
def top(n: int, spec) -> Plan:
    """The top `finetune.top_k` stages trained (layer-wise learning rates), the rest frozen, a fresh head."""
    k = min(spec.top_k, n)
    trained = range(n - k, n)
    return Plan("top", frozenset(range(n - k)), (n - 1,), stage_lr(n, trained, spec),
                frozenset(trained) if spec.freeze_epochs else frozenset())


@REGIMES.register("full")
def full(n: int, spec) -> Plan:
    """Every stage trained from the pretrained weights (after an optional head warm-up, `finetune.freeze_epochs`)."""
    return Plan("full", frozenset(), (n - 1,), stage_lr(n, range(n), spec),
                frozenset(range(n)) if spec.freeze_epochs else frozenset())


@REGIMES.register("lp-ft")
def lp_ft(n: int, spec) -> Plan:
    """Linear probe, then fine-tune (Kumar et al. 2022): the head starts at the exact probe of the
    pretrained features instead of zero, so the first steps do not push a random head's gradients
    through the backbone; then every stage trains as in `full` (BatchNorm included, in training mode),
    and the head, already fitted, at the stages' `backbone_lr_mult` rather than at the full rate."""
    return Plan("lp-ft", frozenset(), (n - 1,), {**stage_lr(n, range(n), spec), "head.": spec.backbone_lr_mult},
                probe_first=True)


@REGIMES.register("scratch")
def scratch(n: int, spec) -> Plan:
    """The same architecture from random initialisation: what the pretrained weights are measured against."""
    return Plan("scratch", frozenset(), (n - 1,), pretrained=False)


def choose_regime(similar: bool, images_per_class: int, lots_from: int) -> tuple[str, str]:
    """`auto`: the lecture's 2x2 table. Data counts as 'lots' from `lots_from` training images per
    class; `similar` is measured (`transfer.similarity`) or declared. Returns (regime, why)."""
    lots = images_per_class >= lots_from
    size = f"{images_per_class} images/class {'>=' if lots else '<'} lots_from {lots_from}"
    kind = "similar" if similar else "different"
    regime = {(True, False): "linear", (True, True): "top", (False, False): "stages", (False, True): "full"}[(similar, lots)]
    return regime, f"{kind} data, {size}"


def zero_head(head: nn.Linear) -> nn.Linear:
    """Start the head at zero. With few images and wide features (10 per class, 1280 channels) the
    training images span only a sliver of the feature space, and a random init's logits outside it
    never decay: EfficientNet-Lite0, 10 Fashion-MNIST images per class, linear regime: random init
    49% test accuracy, zero init (a logistic regression's start) 80%."""
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class TransferNet(nn.Module):
    """Backbone stages -> global average pool of the tapped stages -> concatenate -> linear head.
    Frozen stages stay in eval mode whatever `.train()` is called with (Lightning calls it around
    every validation), so their BatchNorm running statistics never move."""

    def __init__(self, backbone: Backbone, num_classes: int, taps: tuple[int, ...], zero_init: bool = True):
        super().__init__()
        self.in_channels = backbone.in_channels
        self.taps = tuple(taps)
        self.stages = nn.ModuleList(list(backbone.stages)[: max(self.taps) + 1])  # later stages are unused
        head = nn.Linear(sum(backbone.channels[i] for i in self.taps), num_classes)
        self.head = zero_head(head) if zero_init else head  # scratch keeps PyTorch's init: a fair baseline
        self.frozen: frozenset[int] = frozenset()

    def set_frozen(self, frozen: frozenset[int]) -> None:
        self.frozen = frozenset(i for i in frozen if i < len(self.stages))
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i not in self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferNet":
        super().train(mode)
        for i in self.frozen:
            self.stages[i].eval()
        return self

    def pooled(self, x: Tensor) -> Tensor:
        """(B, sum of tapped C_i): what the head reads, and what the feature cache stores."""
        if x.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale into an RGB backbone
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.taps:
                out.append(x.mean((2, 3)))
        return torch.cat(out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pooled(x))
