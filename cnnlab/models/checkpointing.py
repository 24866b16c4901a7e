"""Activation checkpointing of a network's stages (`model.activation_checkpointing`): each stage keeps
only its input for backward and runs its forward again there, trading one more forward of the stage
for the activations it would have saved.

Exact: with deterministic kernels the loss and every gradient are bit-for-bit those of the plain
network. The recomputation runs on the very tensors the forward ran on (torch.func.functional_call's
too, which cnnlab's 16-bit weights use) and replays the forward's RNG (dropout); BatchNorm's running
statistics are updated by the forward only, once a step (the recomputation updates copies)."""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cnnlab.errors import UserError
from cnnlab.models.small import StagedNet

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")  # torchvision's ResNet, ResNeXt, Wide ResNet
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_MARK = "_cnnlab_checkpointed"

# (module, "_parameters" or "_buffers", key, tensor): what a stage's forward ran on
Held = tuple[nn.Module, str, str, torch.Tensor]


def stage_names(net: nn.Module) -> list[str]:
    """Qualified names of the network's stages, forward order: `stages.<i>` of a cnnlab StagedNet,
    `layer1`..`layer4` of a torchvision ResNet (also inside a wrapper, e.g. `net.layer1` under ToRGB);
    [] for a network with neither."""
    for name, m in net.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, StagedNet):
            return [f"{prefix}stages.{i}" for i in range(len(m.stages))]
        children = dict(m.named_children())
        if all(isinstance(children.get(k), nn.Module) for k in RESNET_STAGES):
            return [prefix + k for k in RESNET_STAGES]
    return []


def checkpoint_stages(net: nn.Module, name: str | None = None) -> nn.Module:
    """Run every stage of `net` under non-reentrant activation checkpointing, in place; returns `net`.
    The stages keep their names and parameters (state dicts and checkpoints are unchanged).
    `name`: the model's recipe name, for the error when `net` has no stages."""
    stages = stage_names(net)
    if not stages:
        raise UserError(f"model.activation_checkpointing: {no_stages(name or type(net).__name__)}")
    for s in stages:
        stage = net.get_submodule(s)
        if not getattr(stage, _MARK, False):
            # an instance attribute, the class untouched; a partial of a module-level function pickles
            # (ddp_spawn sends the module to its processes) and deep-copies along with the module
            stage.forward = functools.partial(_checkpointed_forward, stage)
            setattr(stage, _MARK, True)
    return net


def no_stages(name: str) -> str:
    """Why model `name` cannot be checkpointed, and which models can (the recipe check's message too)."""
    return (f"{name} has no stages to checkpoint; it works for cnnlab's staged nets (vgg-small, resnet-small, "
            "vgg-7x7, ...) and torchvision ResNets (layer1..layer4)")


def is_checkpointed(module: nn.Module) -> bool:
    """Whether checkpoint_stages made `module` (a stage) run under checkpointing."""
    return bool(getattr(module, _MARK, False))


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward
    if not torch.is_grad_enabled():  # evaluation: nothing is saved, so nothing to trade
        return forward(self, *args, **kwargs)
    held = _held(self)  # now, while a functional_call's tensors are in place
    return checkpoint(forward, self, *args, use_reentrant=False, preserve_rng_state=True,
                      context_fn=functools.partial(_contexts, held), **kwargs)


def _held(stage: nn.Module) -> list[Held]:
    return [(m, kind, key, t) for m in stage.modules() for kind in ("_parameters", "_buffers")
            for key, t in getattr(m, kind).items() if t is not None]


def _contexts(held: list[Held]) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _recomputing(held)


def _updates_running_stats(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats


@contextlib.contextmanager
def _recomputing(held: list[Held]) -> Iterator[None]:
    """The stage as its forward saw it, while backward recomputes it: the same parameters and buffers,
    but copies of the running statistics of every BatchNorm that updates them. A training-mode
    BatchNorm normalises with the batch's statistics, so its output (and what it saves) is the
    forward's; its update lands on the copies. (track_running_stats=False would save two tensors fewer
    than the forward did, and checkpoint pairs the recomputed tensors with the saved ones by count.)"""
    swapped = []
    for m, kind, key, t in held:
        table = getattr(m, kind)
        swapped.append((table, key, table[key]))
        table[key] = t.clone() if kind == "_buffers" and key in RUNNING_STATS and _updates_running_stats(m) else t
    try:
        yield
    finally:
        for table, key, t in reversed(swapped):
            table[key] = t
