"""What a policy's predictions are worth: accuracy, NLL, calibration, and the paired comparison
with the single view on the same images (a difference of proportions on paired data, and McNemar's
exact test), so that a change within the noise is not called a win."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

Z95 = 1.959963984540054  # the normal quantile for a two-sided 95% interval


def scores(logp: Tensor, y: Tensor, bins: int = 15) -> dict[str, float]:
    """Top-1 accuracy, negative log-likelihood and expected calibration error (L1, `bins` equal-width
    confidence bins) of log-probabilities (N, K) against labels (N,)."""
    return {
        "acc": (logp.argmax(-1) == y).float().mean().item(),
        "nll": -logp.gather(1, y.view(-1, 1)).mean().item(),
        "ece": multiclass_calibration_error(logp.exp(), y, num_classes=logp.shape[-1], n_bins=bins, norm="l1").item(),
    }


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: under 'no difference' the b + c discordant images split
    Binomial(b + c, 1/2); the p-value doubles the smaller tail (at most 1)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(base_right: Tensor, right: Tensor) -> dict[str, Any]:
    """The change in accuracy from `base_right` to `right` (per-image booleans, the same images):
    the difference, its 95% interval (paired Wald from the per-image differences, with the
    continuity correction 1/n, which keeps it in step with McNemar's exact test where counts are
    small), the discordant counts and McNemar's p-value. `significant`: p < 0.05."""
    n = len(right)
    b = int((base_right & ~right).sum())  # right before, wrong now
    c = int((~base_right & right).sum())  # wrong before, right now
    delta = (c - b) / n
    var = max(0.0, (b + c) / n - delta ** 2) / n  # of the mean of d_i in {-1, 0, 1}
    half = Z95 * math.sqrt(var) + 1 / n
    p = mcnemar_p(b, c)
    return {"delta": delta, "ci95": [delta - half, delta + half], "lost": b, "gained": c,
            "mcnemar_p": p, "significant": p < 0.05}
