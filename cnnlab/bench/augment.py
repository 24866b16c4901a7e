"""Augmented-batch throughput: the recipe's pipeline in device mode (one batched call per batch, on
the training device) against loader mode (per-sample torchvision v2 in DataLoader workers) and a
plain copy of the same bytes, side by side in one process on the same shuffled batches."""
from __future__ import annotations

import statistics
from typing import Any

import torch
from torch.utils.data import DataLoader

from cnnlab.augment import Pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.bench.timing import interleaved, once
from cnnlab.data import ImageDataModule
from cnnlab.data.module import TensorImages, collated
from cnnlab.errors import UserError
from cnnlab.spec import Training


def bench(recipe: Training, data: ImageDataModule, pipe: Pipeline, batch_size: int = 512, batches: int = 20, workers: int = 2, repeats: int = 5) -> dict[str, Any]:
    """Augmented-batch throughput of the recipe's pipeline, side by side in one process:
    device mode (one batched call per batch, on the training device), loader mode (per-sample
    torchvision v2 in `workers` DataLoader workers), and a plain copy of the same bytes (ceiling),
    one pass each in turn, `repeats` rounds; the ratios are medians of each round's ratios.
    Every mode cuts the same shuffled batches from the same in-memory training images."""
    use_cuda = recipe.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    images, labels = data.train.images, data.train.labels
    n = min(batches * batch_size, len(labels) // batch_size * batch_size)
    if n == 0:
        raise UserError(f"bench: the training split has {len(labels)} images, fewer than one batch of {batch_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(recipe.seed))[:n]
    g = torch.Generator(device=device).manual_seed(recipe.seed)

    def device_mode() -> None:
        for idx in order.split(batch_size):
            pipe(images.index_select(0, idx).to(device, non_blocking=True), g)

    def copy_only() -> None:
        for idx in order.split(batch_size):
            images.index_select(0, idx).to(device, non_blocking=True).clone()

    ds = TensorImages(images[order], labels[order], per_sample_transform(pipe, tuple(images.shape[-2:])))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collated,
                        persistent_workers=workers > 0)

    def loader_mode() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True)

    modes = {"device": device_mode, "loader": loader_mode, "copy": copy_only}
    for fn in modes.values():  # warm-up: workers started, kernels chosen
        fn()
    # device, loader, copy, device, ...: each round's ratios compare passes taken seconds apart
    secs = interleaved({k: lambda fn=fn: once(fn, device) for k, fn in modes.items()}, repeats)
    runs = {k: [n / t for t in ts] for k, ts in secs.items()}

    def ratio(a: str, b: str) -> dict[str, Any]:
        r = sorted(x / y for x, y in zip(runs[a], runs[b]))
        return {"median": statistics.median(r), "min": r[0], "max": r[-1]}

    over_loader, over_copy = ratio("device", "loader"), ratio("device", "copy")
    return {"ops": [step[0] for step in pipe.steps], "batch_size": batch_size, "images_per_repeat": n,
            "loader_workers": workers, "device": str(device), "threads": torch.get_num_threads(), "repeats": repeats,
            "images_per_s": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs,
            "device_over_loader": over_loader["median"], "device_over_copy": over_copy["median"],
            "paired": {"device_over_loader": over_loader, "device_over_copy": over_copy}}
