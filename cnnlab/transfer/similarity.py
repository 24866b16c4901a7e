"""`auto`'s measured similarity between the backbone's data and the target's.

A backbone's early stages compute generic features (edges, textures); its top stage computes features
specific to the data it was trained on. On data like its own, the top stage's features separate the
target's classes best; on different data, an earlier stage's do as well or better. So: fit a linear
probe on each stage's pooled features of the target's training images (cross-validated, nothing
trained on the backbone), and call the data similar when the top stage's probe is within `tolerance`
of the best stage's (by default: is the best), different when an earlier stage beats it by more.

Measured (cnnlab finetune's shipped recipes, 10/50/200 training images per class): a vgg-small trained
on Fashion-MNIST classes 0-4, probed on classes 5-9, is best at its top stage by 1-8 points every
time; ImageNet EfficientNet-Lite0 on Fashion-MNIST is best at stage 3 of 5, 1-10 points ahead of its
top stage every time. With 50 images the probes' standard error is ~5 points: declare
`finetune.similar` when you know better.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlab.transfer.features import tap_slices


@dataclass(frozen=True)
class Similarity:
    similar: bool
    probes: tuple[float, ...]  # cross-validated linear-probe accuracy per stage, bottom to top
    images: int  # training images the probes saw
    why: str


def stage_probes(feats: Tensor, labels: Tensor, channels: list[int], seed: int = 0) -> tuple[float, ...]:
    """(N, sum C_i) pooled taps of every stage -> each stage's linear-probe accuracy: standardised
    features, multinomial logistic regression, stratified k-fold (k = min(5, images of the rarest class))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if feats.ndim != 2 or feats.shape[1] != sum(channels) or len(feats) != len(labels):
        raise ValueError(f"features must be (N, {sum(channels)}) for {len(labels)} labels, got {tuple(feats.shape)}")
    y = labels.numpy()
    folds = min(5, int(torch.bincount(labels).min()))
    if folds < 2:
        raise ValueError("a cross-validated probe needs at least 2 images of every class")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for i in range(len(channels)):
        x = feats[:, tap_slices(channels, (i,))].double().numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        out.append(float(cross_val_score(probe, x, y, cv=cv).mean()))
    return tuple(out)


def judge(probes: tuple[float, ...], tolerance: float, images: int = 0) -> Similarity:
    """Similar when the top stage's probe is within `tolerance` of the best stage's."""
    best = max(range(len(probes)), key=lambda i: (probes[i], -i))  # ties go to the lower stage
    gap = probes[best] - probes[-1]
    similar = gap <= tolerance
    accs = " ".join(f"{p:.1%}" for p in probes)
    if gap <= 0:
        why = "the top stage's is the best"
    elif similar:
        why = f"the top stage's is within {tolerance:.1%} of stage {best}'s"
    else:
        why = f"stage {best}'s beats the top stage's by {gap:.1%} (tolerance {tolerance:.1%})"
    return Similarity(similar, tuple(probes), images,
                      f"measured {'similar' if similar else 'different'}: linear probes by stage {accs} "
                      f"on {images} images; {why}")
