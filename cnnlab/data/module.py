"""The LightningDataModule: whole splits held as uint8 tensors, batches cut by index."""
from __future__ import annotations

import functools
import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.sources import SOURCES, Split, resize
from cnnlab.data.spec import DataSpec
from cnnlab.env import device_free_bytes
from cnnlab.errors import UserError


class TensorImages(Dataset):
    """uint8 images + labels in memory. `__getitems__` cuts a whole batch with one index op;
    an optional per-sample `transform` (loader-side augmentation) runs inside the workers. Given
    `(epoch, index)` items (EpochShuffle with `tag_epoch`), each image's draws are a function of
    (seed, epoch, index): a resumed run, and any number of processes or workers, draw the same."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None,
                 seed: int = 0, rows: Tensor | None = None):
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed
        self.rows = rows  # the dataset's image i is images[rows[i]] (a packed split read from its map)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return tuple(t[0] for t in self.__getitems__([i]))  # type: ignore[return-value]

    def __getitems__(self, idx: list[int] | list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        epoch = None
        if idx and isinstance(idx[0], tuple):
            epoch, idx = idx[0][0], [i for _, i in idx]
        index = torch.as_tensor(idx, device=self.images.device)
        x = self.images.index_select(0, index if self.rows is None else self.rows[index])  # far faster than x[index]
        if self.transform:
            x = torch.stack([self._draw(im, i, epoch) for im, i in zip(x, idx)])
        return x, self.labels.index_select(0, index)

    def _draw(self, image: Tensor, i: int, epoch: int | None) -> Tensor:
        if epoch is not None:  # the transforms draw from the global CPU generator
            torch.default_generator.manual_seed((self.seed * 100_003 + epoch) * len(self) + i)
        return self.transform(image)


def collated(b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn of cnnlab loaders: TensorImages.__getitems__ already returns a collated batch."""
    return b


def per_process_batch(batch_size: int, processes: int) -> int:
    """`data.batch_size` is the global batch: every process takes an equal share of it."""
    if batch_size % processes:
        raise UserError(f"data.batch_size: {batch_size} images do not split evenly over {processes} processes; "
                        f"use a multiple of {processes} (it is the global batch, divided per process)")
    return batch_size // processes


@functools.lru_cache(maxsize=None)
def stateful_loader() -> type[DataLoader]:
    """torchdata's StatefulDataLoader, whose state after an epoch's last batch is a fresh start: a
    checkpoint at an epoch's end resumes at the next epoch's first batch (its own state would have
    the next epoch's iterator skip as many batches as the finished epoch had)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchdata.stateful_dataloader import StatefulDataLoader
    warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata's own deprecation notice

    class EpochLoader(StatefulDataLoader):
        def state_dict(self) -> dict:
            state = super().state_dict()
            # batches handed out: counted at the top with no workers; with workers, as the last
            # snapshot's step plus the steps since
            snap = state.get("_snapshot")
            yielded = state.get("_num_yielded", 0) if snap is None else snap["_snapshot_step"] + state["_steps_since_snapshot"]
            return {} if state.get("_iterator_finished") or yielded >= len(self) else state

        def load_state_dict(self, state: dict) -> None:
            if state:
                super().load_state_dict(state)

    return EpochLoader


class EpochShuffle(Sampler[int]):
    """This process's share of a permutation that is a pure function of (seed, epoch): a resumed run
    sees the same order as an uninterrupted one. Each global batch of the permutation is cut into
    `processes` equal slices, so every step trains on the same images whatever the process count.
    Only whole global batches are used when there is more than one. Lightning calls `set_epoch`."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, processes: int = 1, tag_epoch: bool = False):
        self.n, self.seed, self.epoch, self.tag_epoch = n, seed, 0, tag_epoch  # tag_epoch: yield (epoch, index)
        self.batch_size, self.rank, self.processes = batch_size, rank, processes  # batch_size: global
        if n < processes:
            raise UserError(f"data: {n} training images cannot be shared by {processes} processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # a sampler with a state (torchdata's StatefulDataLoader asks it): the epoch and how many indices
    # of its order were taken, so that a run checkpointed mid-epoch resumes at the next index of the
    # same order without drawing (or reading) anything it skips
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "taken": self._taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._start = state["epoch"], state["taken"]

    _taken, _start = 0, 0

    def __iter__(self):
        start, self._start, self._taken = self._start, 0, 0
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        B = self.batch_size
        if self.n > B:
            order = order[: self.n // B * B].view(-1, B)  # (global batches, B)
        else:
            order = order.view(1, -1)  # one smaller batch
        mine = order.tensor_split(self.processes, dim=1)[self.rank].flatten().tolist()
        # a generator: the order is drawn at the first index taken, after Lightning's set_epoch, even
        # where a loader makes its iterator early (a resumed fit does, before the epoch is set)
        self._taken = start
        for i in mine[start:]:
            self._taken += 1
            yield (self.epoch, i) if self.tag_epoch else i

    def __len__(self) -> int:
        if self.n > self.batch_size:
            return self.n // self.batch_size * (self.batch_size // self.processes)
        return len(torch.arange(self.n).tensor_split(self.processes)[self.rank])


class Shard(Sampler[int]):
    """A contiguous, unpadded share of 0..n-1 for evaluation: every image is counted exactly once
    over all processes (a DistributedSampler pads with repeats to equal lengths)."""

    def __init__(self, n: int, rank: int = 0, processes: int = 1):
        self.indices = torch.arange(n).tensor_split(processes)[rank].tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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
    out = split.take(torch.nonzero(remap[split.labels] >= 0).flatten())
    out.labels, out.classes = remap[out.labels], [split.classes[c] for c in classes]
    return out


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


STATS_CHUNK = 64  # images summed at a time: 1,000 photos at 224 px as float would be 600 MB, twice


def channel_stats(images: Tensor | Split) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std: of uint8 images in [0, 1] units, of float data as it is.
    Sums in float64 over chunks of images, so memory stays at one chunk however large the split
    (a packed split's chunks are gathered from its map, one at a time)."""
    shape = images.shape
    total = torch.zeros(shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    dtype = images.dtype if isinstance(images, Tensor) else torch.uint8
    for chunk in (images.chunks(STATS_CHUNK) if isinstance(images, Split) else images.split(STATS_CHUNK)):
        x, dtype = chunk.double(), chunk.dtype
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    n = math.prod(shape) // shape[1]
    mean = total / n
    var = (squares - n * mean.square()) / max(n - 1, 1)
    scale = 255.0 if dtype == torch.uint8 else 1.0
    return (mean / scale).float(), (var.clamp_min(0).sqrt() / scale).float().clamp_min(1e-6)


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test splits of a recipe's data section, as uint8 tensors in memory."""

    def __init__(self, spec: DataSpec, seed: int = 0, train_transform: Callable | None = None):
        super().__init__()
        self.spec, self.seed, self.train_transform = spec, seed, train_transform
        self.train: Split | None = None
        self.skipped: list[dict[str, str]] = []  # image files left out as unreadable (data.bad_images: skip)
        self.load_s = 0.0  # seconds to read both splits
        self.files: dict = {"sizes": [], "cached": False}  # image files: original sizes, whether from the cache
        self.placement: dict | None = None  # where the images live while training: see place()
        self._placed: dict[str, tuple[Tensor, Tensor, None]] = {}  # split name -> (images, labels) on the device

    @property
    def batch_size(self) -> int:
        """data.batch_size (the global batch): Lightning's batch-size finder reads and sets it here."""
        return self.spec.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.spec.batch_size = int(value)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        s = self.spec
        load = SOURCES.get(s.source)
        root = Path(s.root) if s.root else None
        t0 = time.perf_counter()
        full, test = load(root, "train", s.decode()), load(root, "test", s.decode())
        self.load_s = time.perf_counter() - t0
        self.skipped = unreadable(full, test, policy=s.bad_images)
        self.files = {"sizes": full.sizes + test.sizes, "cached": full.cached and test.cached}
        full, test = select_classes(full, s.classes), select_classes(test, s.classes)
        full = full.take(per_class(full.labels, s.subset, purpose_generator(self.seed, "train-subset")))
        test = test.take(per_class(test.labels, s.test_subset, purpose_generator(self.seed, "test-subset")))
        tr, va = stratified_split(full.labels, s.val_split, purpose_generator(self.seed, "val"))
        self.train, self.val = full.take(tr), full.take(va)
        self.test = test
        for split in (self.train, self.val, self.test):
            if s.image_size is not None and split.shape[-2:] != (s.image_size, s.image_size):
                split.images = resize(split.images, s.image_size)
        self.mean, self.std = channel_stats(self.train)

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
        return self.train.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.shape[-1]

    def _device(self) -> torch.device:
        """The device this process trains on, from the strategy (CPU when not in a Trainer)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _tensors(self, name: str) -> tuple[Tensor, Tensor, Tensor | None]:
        """A split's (images, labels, rows) where the placement puts them: for `device`, all three
        splits go to the accelerator once (after a check of its free memory), and stay there; on the
        host a packed split stays in its map (rows: which of the map's images are the split's)."""
        device = self._device()
        if self.placement is None or self.placement["device"] != str(device):
            nbytes = sum(s.nbytes for s in (self.train, self.val, self.test) if s is not None)
            free = device_free_bytes(device) if device.type == "cuda" and self.spec.placement == "device" else None
            self.placement = place(self.spec.placement, device, nbytes, free)
            self._placed = {}
            if self.placement["why"]:
                from pytorch_lightning.utilities import rank_zero_warn

                rank_zero_warn(self.placement["why"])
        split = getattr(self, name)
        if self.placement["used"] != "device":
            if split.mapped:
                return split.base, split.labels, split.rows
            return split.images, split.labels, None
        if name not in self._placed:  # on a CPU .to() returns the very same tensors: one code path
            self._placed[name] = (split.images.to(device), split.labels.to(device), None)
        return self._placed[name]

    def _loader(self, name: str, train: bool, transform: Callable | None = None) -> DataLoader:
        images, labels, rows = self._tensors(name)
        ds = TensorImages(images, labels, transform, self.seed, rows)
        trainer = self.trainer
        rank, processes = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch = per_process_batch(self.spec.batch_size, processes)
        sampler = (EpochShuffle(len(ds), self.seed, self.spec.batch_size, rank, processes, tag_epoch=transform is not None) if train
                   else Shard(len(ds), rank, processes))
        if train and trainer is not None:
            # the epoch a fit resumed at an epoch's end starts in: loader workers draw their first
            # indices as soon as the fit makes the iterator, before Lightning's set_epoch
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)  # what Lightning will set
        w = self.spec.num_workers
        pin = images.device.type == "cpu" and self._device().type == "cuda"  # then Lightning copies with non_blocking
        # training: a loader with state_dict (torchdata's StatefulDataLoader), so that a checkpoint
        # taken mid-epoch resumes at the next batch of the same order, with workers too (Lightning
        # saves and restores a loader's state only when it has one)
        make = stateful_loader() if train else DataLoader
        return make(ds, batch_size=batch, sampler=sampler, collate_fn=collated, num_workers=w,
                    persistent_workers=w > 0, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.train_transform)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


DEVICE_SHARE = 0.5  # at most this fraction of the accelerator's free memory holds data (the rest: model, activations)


def place(asked: str, device: torch.device, nbytes: int, free: int | None) -> dict:
    """Where the images live while training: `device` puts the whole uint8 set on the accelerator
    when it takes at most DEVICE_SHARE of its free memory, else falls back to host memory and says
    why. On a CPU the device is the host: both placements use host memory, by the same code path."""
    plan = {"asked": asked, "used": asked, "device": str(device), "bytes": nbytes, "free": free, "why": None}
    if asked == "device" and free is not None and nbytes > DEVICE_SHARE * free:
        plan["used"] = "host"
        plan["why"] = (f"data.placement device: the images take {nbytes / 2**30:.2f} GiB, more than {DEVICE_SHARE:.0%} of the "
                       f"{free / 2**30:.2f} GiB free on {device}; batches come from pinned host memory instead")
    return plan


IMBALANCE = 2.0  # largest / smallest training class at which the data report warns


def describe(dm: ImageDataModule) -> dict:
    """The data report (results.json["data"]): images per class and split, files skipped and why,
    the original size range of image files, how long loading took, and warnings (class imbalance,
    classes without test images)."""
    def per_class(split: Split) -> dict[str, int]:
        return {c: int((split.labels == i).sum()) for i, c in enumerate(split.classes)}

    splits = {name: per_class(s) for name, s in (("train", dm.train), ("val", dm.val), ("test", dm.test))}
    out: dict = {"source": dm.spec.source, "shape": list(dm.train.shape[1:]), "load_s": round(dm.load_s, 3),
                 "splits": splits, "skipped": dm.skipped, "warnings": []}
    files = dm.files
    if files["sizes"]:
        ws, hs = [w for w, _ in files["sizes"]], [h for _, h in files["sizes"]]
        px = sorted(files["sizes"], key=lambda s: s[0] * s[1])
        out["files"] = {"decoded": len(files["sizes"]), "cached": files["cached"], "width": [min(ws), max(ws)],
                        "height": [min(hs), max(hs)], "smallest": list(px[0]), "largest": list(px[-1]),
                        "resize": dm.spec.decode().resize}
    if dm.spec.source == "packed":  # which pack, exactly: its checksum(s) and what it was packed from
        from cnnlab.pack import checksums, read_header

        h = read_header(Path(dm.spec.root))
        out["pack"] = {"file": dm.spec.root, "version": h["version"], "packed_from": h.get("source"),
                       "sha256": checksums(h)}
    fit = {c: splits["train"][c] + splits["val"][c] for c in splits["train"]}
    big, small = max(fit, key=fit.get), min(fit, key=fit.get)
    if fit[small] == 0 or fit[big] / fit[small] >= IMBALANCE:
        ratio = f"{fit[big] / fit[small]:.1f}x" if fit[small] else "none of the other"
        out["warnings"].append(f"class imbalance: '{big}' has {fit[big]} training images, '{small}' {fit[small]} ({ratio}); "
                               "accuracy will favour the larger classes: data.subset caps every class at one count, "
                               "and per_class_acc shows each")
    empty = [c for c, n in splits["test"].items() if n == 0]
    if empty:
        out["warnings"].append(f"no test images for {', '.join(map(repr, empty))}: their accuracy is not measured")
    return out
