"""Frozen-backbone features, computed once and cached on disk.

When every stage the head reads is frozen (`linear`, `stages`), the backbone's output for an image
never changes: pass every image through it once, keep the pooled taps, and train the head on those.
The cache key is a hash of everything that decides the features: backbone identity (name + weights
file digest), the data selection (source, classes, subsets, split, seed), a hash of the images
themselves (a photo edited in place, or decoded another way, is a miss) and the preprocessing
(image size, normalisation, channel repeat). Change any of them and the key changes (a miss).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from cnnlab.data.module import TensorImages, collated
from cnnlab.data.sources import Split
from cnnlab.io import load_tensors, save_tensors
from cnnlab.transfer.backbones import Backbone
from cnnlab.transfer.regimes import TransferNet

CACHE_VERSION = 3  # bump when the way features (or the images behind a key) are computed changes


class _Extractor(pl.LightningModule):
    """uint8 batches -> normalised -> (B, sum C_i) pooled taps of every stage, frozen, eval mode."""

    def __init__(self, net: TransferNet, mean: Tensor, std: Tensor):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = (batch[0].float().div_(255) - self.mean) / self.std
        return self.net.pooled(x.contiguous(memory_format=torch.channels_last))


def digest(t: Tensor) -> str:
    """A hash of a tensor's bytes: the images behind a key, so that a changed photo is a miss."""
    return hashlib.blake2b(t.contiguous().numpy().data, digest_size=16).hexdigest()


def compute_identity(accelerator: str) -> dict[str, Any]:
    """What decides the features' low bits besides the inputs: the device they are computed on and,
    on CUDA, whether TF32 may stand in for float32 in convolutions and matmuls."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return {"device": f"cuda: {torch.cuda.get_device_name()}",
                "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}}
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return {"device": "mps"}
    return {"device": "cpu"}


def cache_key(backbone: Backbone, data_spec, seed: int, image_size: int, splits: dict[str, Split] | None = None,
              compute: dict[str, Any] | None = None) -> str:
    """The feature cache's key: the backbone, the data and its preprocessing, and `compute`
    (compute_identity: features computed on a GPU with TF32 are not the CPU's)."""
    d = data_spec
    key = {"version": CACHE_VERSION, "backbone": backbone.identity, "taps": "all", "compute": compute or {"device": "cpu"},
           "data": [d.source, d.root, d.classes, d.subset, d.test_subset, d.val_split, seed],
           "images": {name: digest(s.images) for name, s in sorted((splits or {}).items())},
           "preprocessing": {"image_size": image_size, "mean": backbone.mean, "std": backbone.std,
                             "in_channels": backbone.in_channels}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def extract(backbone: Backbone, splits: dict[str, Split], batch_size: int, trainer: pl.Trainer) -> dict[str, Tensor]:
    """Pooled taps of every stage for every split: {split: (N, sum C_i) float32}, predicted by
    `trainer` (the engine's one-device evaluator)."""
    net = TransferNet(backbone, 1, tuple(range(len(backbone.stages))))
    net.set_frozen(frozenset(range(len(net.stages))))
    net.to(memory_format=torch.channels_last)
    module = _Extractor(net, torch.tensor(backbone.mean), torch.tensor(backbone.std))
    out = {}
    for name, split in splits.items():
        loader = torch.utils.data.DataLoader(TensorImages(split.images, split.labels), batch_size=batch_size,
                                             collate_fn=collated)
        feats = trainer.predict(module, dataloaders=loader) if len(split.labels) else []
        out[name] = torch.cat(feats).float().cpu() if feats else torch.zeros(0, sum(backbone.channels))
    return out


def cached_features(backbone: Backbone, splits: dict[str, Split], key: str, cache_dir: str | None,
                    batch_size: int, trainer: pl.Trainer, write: bool = True) -> tuple[dict[str, Tensor], bool]:
    """(features per split, whether they came from the cache). `cache_dir` None: no cache; a miss
    is stored there only when `write` (global rank 0 writes, the other processes read)."""
    path = Path(cache_dir) / f"{key}.pt" if cache_dir else None
    stored = _read_cache(path) if path is not None and path.is_file() else None
    if stored is not None and stored.get("key") == key and all(
            isinstance(stored.get(n), Tensor) and stored[n].ndim == 2 and len(stored[n]) == len(s.labels)
            for n, s in splits.items()):
        return {n: stored[n] for n in splits}, True
    feats = extract(backbone, splits, batch_size, trainer)
    if path is not None and write:
        save_tensors(path, {"key": key, "backbone": backbone.identity, **feats})
    return feats, False


def _read_cache(path: Path) -> dict[str, Any] | None:
    """A feature cache file's content, or None for one that is truncated, damaged or not a cache
    (objects a safe load refuses included): a miss, computed again and written over."""
    try:
        stored = load_tensors(path)
    except Exception:
        return None
    return stored if isinstance(stored, dict) else None


def tap_slices(channels: list[int], taps: tuple[int, ...]) -> Tensor:
    """Column indices of the cached (N, sum C_i) features that belong to `taps`."""
    starts = torch.tensor([0, *channels]).cumsum(0)
    return torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in taps])
