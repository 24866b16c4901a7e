"""The LightningDataModule: whole splits held as uint8 tensors, batches cut by index."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.sources import SOURCES, Split, resize
from cnnlab.errors import UserError
from cnnlab.recipe import DataSpec


class TensorImages(Dataset):
    """uint8 images + labels in memory. `__getitems__` cuts a whole batch with one index op;
    an optional per-sample `transform` (loader-side augmentation) runs inside the workers."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx)
        x = self.images.index_select(0, index)  # far faster than x[index] for a batch of images
        if self.transform:
            x = torch.stack([self.transform(im) for im in x])
        return x, self.labels.index_select(0, index)


def _batch(b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return b  # __getitems__ already returns a collated batch


class EpochShuffle(Sampler[int]):
    """A permutation that is a pure function of (seed, epoch): a resumed run sees the same order
    as an uninterrupted one. Lightning calls `set_epoch` on samplers that have it."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def purpose_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator of its own for each seeded draw ('train-subset', 'test-subset', 'val'), so that
    changing one draw (a test subset, say) never moves another (the training images). 'val' is
    seeded with `seed` itself: the hold-out of runs on whole splits is the one it always was."""
    if purpose == "val":
        return torch.Generator().manual_seed(seed)
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def per_class(labels: Tensor, count: int | None, g: torch.Generator) -> Tensor:
    """Indices of a seeded draw of at most `count` images of each class (all when None)."""
    if count is None:
        return torch.arange(len(labels))
    keep = [idx[torch.randperm(len(idx), generator=g)[:count]]
            for c in labels.unique() for idx in [torch.nonzero(labels == c).flatten()]]
    return torch.cat(keep).sort().values


def stratified_split(labels: Tensor, fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train, val) indices with `fraction` of each class in val (at least one when fraction > 0)."""
    train, val = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * fraction)) if fraction > 0 and len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def select_classes(split: Split, classes: list[int] | None) -> Split:
    """Keep only `classes`, relabelled 0..k-1 in the given order."""
    if classes is None:
        return split
    n = len(split.classes)
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise UserError(f"data.classes: {bad} out of range; this source has classes 0..{n - 1}")
    remap = torch.full((n,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    keep = remap[split.labels] >= 0
    return Split(split.images[keep], remap[split.labels[keep]], [split.classes[c] for c in classes])


def unreadable(*splits: Split, policy: str) -> list[dict[str, str]]:
    """The image files the splits left out as unreadable, as {file, reason}; with policy 'error'
    (data.bad_images) the first of them is a UserError. A file listed by both splits (one folder cut
    into train and test) counts once."""
    found = dict(sorted({f: why for s in splits for f, why in s.skipped}.items()))
    if found and policy == "error":
        f, why = next(iter(found.items()))
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(f"data.root: cannot read {f}: {why}{more}; fix or remove it, or set data.bad_images: skip "
                        "to leave unreadable images out")
    return [{"file": f, "reason": why} for f, why in found.items()]


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std: of uint8 images in [0, 1] units, of float data as it is."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    x = x.transpose(0, 1).flatten(1)  # (C, N*H*W)
    return x.mean(1), x.std(1).clamp_min(1e-6)


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test splits of a recipe's data section, as uint8 tensors in memory."""

    def __init__(self, spec: DataSpec, seed: int = 0, train_transform: Callable | None = None):
        super().__init__()
        self.spec, self.seed, self.train_transform = spec, seed, train_transform
        self.train: Split | None = None
        self.skipped: list[dict[str, str]] = []  # image files left out as unreadable (data.bad_images: skip)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        s = self.spec
        load = SOURCES.get(s.source)
        root = Path(s.root) if s.root else None
        full, test = load(root, "train"), load(root, "test")
        self.skipped = unreadable(full, test, policy=s.bad_images)
        full, test = select_classes(full, s.classes), select_classes(test, s.classes)
        full = _take(full, per_class(full.labels, s.subset, purpose_generator(self.seed, "train-subset")))
        test = _take(test, per_class(test.labels, s.test_subset, purpose_generator(self.seed, "test-subset")))
        tr, va = stratified_split(full.labels, s.val_split, purpose_generator(self.seed, "val"))
        self.train, self.val = _take(full, tr), _take(full, va)
        self.test = test
        for split in (self.train, self.val, self.test):
            split.images = resize(split.images, s.image_size)
        self.mean, self.std = channel_stats(self.train.images)

    @classmethod
    def from_splits(cls, spec: DataSpec, seed: int, train: Split, val: Split, test: Split) -> "ImageDataModule":
        """Batches of splits made elsewhere (e.g. cached features as (N, D, 1, 1) float tensors);
        no normalisation statistics: the caller decides what the model sees."""
        dm = cls(spec, seed)
        dm.train, dm.val, dm.test = train, val, test
        return dm

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def _loader(self, split: Split, train: bool, transform: Callable | None = None) -> DataLoader:
        ds = TensorImages(split.images, split.labels, transform)
        w = self.spec.num_workers
        return DataLoader(ds, batch_size=self.spec.batch_size,
                          sampler=EpochShuffle(len(ds), self.seed) if train else None,
                          collate_fn=_batch, num_workers=w, persistent_workers=w > 0,
                          drop_last=train and len(ds) > self.spec.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, True, self.train_transform)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, False)


def _take(split: Split, idx: Tensor) -> Split:
    return Split(split.images[idx], split.labels[idx], split.classes)
