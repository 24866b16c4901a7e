"""Policies (views composed with '+': `ten-crop+scales`), and the aggregation of each image's view
scores into one prediction. Pure functions of tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from cnnlab.tta import VIEWS

AGGREGATIONS = ("mean-prob", "mean-logit", "max")


def parse(policy: str) -> list[str]:
    """'ten-crop+scales' -> ['ten-crop', 'scales']; raises ValueError naming what is wrong."""
    names = [p.strip() for p in str(policy).split("+")]
    if not all(names):
        raise ValueError(f"'{policy}' has an empty view; write views joined by '+', e.g. hflip+translate")
    for n in names:
        VIEWS.get(n)  # KeyError with did-you-mean
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"'{policy}' names {', '.join(twice)} twice")
    return names


@dataclass
class Policy:
    """A named composition of views: the left view first, each later one applied to every view
    before it, so `hflip+translate` is 2 x 5 = 10 views per image."""

    name: str
    steps: list[tuple[str, Callable[..., Tensor], dict[str, Any]]] = field(default_factory=list)
    views: int | None = None  # views (forward passes) per image, counted by `check` on a real image

    def __call__(self, x: Tensor) -> Tensor:
        for _, fn, kwargs in self.steps:
            x = fn(x, **kwargs)
        return x


def build(policy: str, params: dict[str, dict[str, Any]]) -> Policy:
    """A policy with each view's parameters from `params` (a recipe's `eval.views`), checked
    against the view's signature."""
    steps = []
    for name in parse(policy):
        fn = VIEWS.get(name)
        steps.append((name, fn, VIEWS.check_kwargs(fn, params.get(name, {}))))
    return Policy(policy, steps)


def check(policy: Policy, sample: Tensor) -> int:
    """Run the policy once on one real image, so a view that does not fit the data (a shift as
    large as the image) is refused before any work starts (ValueError naming the view); sets and
    returns the policy's views per image."""
    x = sample[:1]
    for name, fn, kwargs in policy.steps:
        try:
            x = fn(x, **kwargs)
        except ValueError as e:
            raise ValueError(f"view '{name}' of policy '{policy.name}': {e}") from None
    policy.views = len(x)
    return policy.views


def aggregate(logits: Tensor, how: str) -> Tensor:
    """Per-view logits (V, B, K) -> log-probabilities (B, K) of the combined prediction.
    mean-prob: the mean of the views' softmax (timm, fastai); mean-logit: softmax of the mean logit;
    max: each class's highest probability over the views, renormalised. With one view every rule
    gives log_softmax of that view exactly."""
    logits = logits.float()
    V = logits.shape[0]
    if how == "mean-logit":
        return torch.log_softmax(logits.mean(0), dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    if V == 1:
        return logp[0]
    if how == "mean-prob":
        return torch.logsumexp(logp, dim=0) - math.log(V)
    if how == "max":
        top = logp.max(0).values
        return top - torch.logsumexp(top, dim=-1, keepdim=True)
    raise ValueError(f"unknown aggregation '{how}'; choose from {', '.join(AGGREGATIONS)}")
