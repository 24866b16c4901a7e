"""Optimizer and learning-rate schedule from a recipe's optim: and schedule: sections, and the
per-step seed every random draw of training comes from."""
from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.precision import LowPrecision, LowPrecisionAdamW, LowPrecisionSGD
from cnnlab.spec import OptimSpec, ScheduleSpec


def lr_factor(step: int, total: int, steps_per_epoch: int, s: ScheduleSpec) -> float:
    """Learning rate at `step` as a fraction of the peak: linear warm-up, then the named decay."""
    warm = round(s.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)  # progress after warm-up, 0 -> 1
    if s.name == "onecycle":
        return 1 - (1 - s.final_frac) * t
    if s.name == "cosine":
        return s.final_frac + (1 - s.final_frac) * 0.5 * (1 + math.cos(math.pi * t))
    if s.name == "step":
        return s.gamma ** ((step - warm) // (s.step_epochs * steps_per_epoch))
    return 1.0


def step_seed(seed: int, rank: int, step: int) -> int:
    """Every random draw of a training step (dropout, device augmentation) is a function of
    (seed, rank, step): a resumed run continues exactly as an uninterrupted one would have, and the
    processes of a data-parallel run draw differently (rank 0 as a single process does)."""
    return seed * 1_000_003 + step + rank * 7_919_000_017


def build_optimizer(params: list[tuple[str, nn.Parameter]], spec: OptimSpec, lr_scale: dict[str, float] | None = None,
                    lowp: tuple[LowPrecision, nn.Module] | None = None) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not norms, biases). `lr_scale` maps a parameter-name
    prefix to a learning-rate multiplier (discriminative learning rates), one param group each.
    `lowp`: the 16-bit storage of (LowPrecision, net) stands for the parameters (optim.weights)."""
    if lowp is not None:
        params = list(lowp[0].storage(lowp[1]).items())
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in params:
        if not p.requires_grad and lowp is None:
            continue
        scale = next((v for k, v in (lr_scale or {}).items() if name.startswith(k)), 1.0)
        groups.setdefault((scale, p.ndim > 1), []).append(p)
    param_groups = [{"params": ps, "lr": spec.lr * scale, "weight_decay": spec.weight_decay if decay else 0.0}
                    for (scale, decay), ps in groups.items()]
    if lowp is not None:
        state = spec.weights.state  # type: ignore[attr-defined]
        if spec.name == "sgd":
            return LowPrecisionSGD(*lowp, param_groups, lr=spec.lr, momentum=spec.momentum,
                                   nesterov=spec.nesterov and spec.momentum > 0, state_dtype=state)
        return LowPrecisionAdamW(*lowp, param_groups, lr=spec.lr, betas=spec.betas, state_dtype=state)
    if spec.name == "sgd":
        return torch.optim.SGD(param_groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=spec.lr, betas=spec.betas)
