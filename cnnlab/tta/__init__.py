"""Test-time augmentation: deterministic views of a batch, composed into policies, each image's
views classified in batched forwards and their scores aggregated.

A view is a pure function `view(x, **params) -> Tensor` of a (B, C, H, W) batch that returns
(V * B, C, H, W), view-major (the first B rows are view 0 of every image), at the input's size and
dtype. Parameters come from a recipe's `eval.views`, checked against the view's signature.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from cnnlab.registry import Registry

VIEWS: Registry[Callable[..., Tensor]] = Registry("test-time view", supplied={"x"})

from cnnlab.tta import views as _views  # noqa: E402,F401  (registers the views)
