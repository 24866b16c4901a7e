"""How fast each way of storing images feeds training, measured side by side on the same images in the
same shuffled batches: PNG files through a PIL DataLoader, a packed file (cold and warm page cache),
in-memory tensors, and a plain copy of the same bytes; and host-to-device copies when a GPU is here."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cnnlab.bench.timing import median_seconds, once
from cnnlab.data.images import workers
from cnnlab.data.module import TensorImages
from cnnlab.errors import UserError
from cnnlab.pack.format import open_pack
from cnnlab.io import write_json
from cnnlab.transfer.features import digest

EXPORT_MARK = ".cnnlab-export.json"  # what an exported folder holds, so a second run reuses it
H2D_BYTES = 256 << 20  # a large copy for the bandwidth rows; one batch is the other size


def _png_name(folder: Path, label: int, i: int) -> Path:
    return folder / f"{label:03d}" / f"{i:07d}.png"  # ImageFolder's sorted order is (label, i)


def export_pngs(images: Tensor, labels: Tensor, folder: Path, advance: Callable[[], None] = lambda: None) -> bool:
    """Write image i as <folder>/<label>/<i>.png (one file each, as an ImageFolder). A folder that
    already holds exactly these images (its mark says so) is kept; returns whether files were written."""
    from PIL import Image

    folder = Path(folder)
    mark = {"images": len(labels), "shape": list(images.shape[1:]), "digest": digest(images) + digest(labels)}
    if (folder / EXPORT_MARK).is_file() and json.loads((folder / EXPORT_MARK).read_text()) == mark:
        return False
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--export-folder: {folder} is not empty and holds no export of these images; give an empty or new folder")
    for c in labels.unique().tolist():
        (folder / f"{c:03d}").mkdir(parents=True, exist_ok=True)
    arr = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)

    def save(i: int) -> None:
        a = arr[i][..., 0] if arr.shape[-1] == 1 else arr[i]
        Image.fromarray(a).save(_png_name(folder, int(labels[i]), i))

    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for _ in pool.map(save, range(len(labels))):
            advance()
    write_json(folder / EXPORT_MARK, mark)  # last, renamed into place: a folder without it is not an export
    return True


def drop_cache(paths: list[Path]) -> str:
    """Evict `paths` from the OS page cache: the whole cache through /proc/sys/vm/drop_caches where
    permitted (root, outside containers), else each file with posix_fadvise(DONTNEED), which any
    reader may do for clean pages. Returns how, for the table."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        pass
    if not hasattr(os, "posix_fadvise"):
        return "not dropped (no posix_fadvise here)"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise(DONTNEED) per file (drop_caches not permitted)"


class _Loader:
    """ImageFolder's loader keeping the images' own channel count (its default makes every file RGB)."""

    def __init__(self, channels: int):
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, path: str):
        from PIL import Image

        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


def png_loader(folder: Path, order: Tensor, batch_size: int, workers: int, channels: int) -> DataLoader:
    """torchvision's ImageFolder + PILToTensor in a DataLoader with workers: the usual path, visiting
    the images in `order` (indices of the exported images)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=transforms.PILToTensor(), loader=_Loader(channels))
    position = torch.empty(len(ds.samples), dtype=torch.int64)
    for pos, (path, _) in enumerate(ds.samples):
        position[int(Path(path).stem)] = pos
    return DataLoader(ds, batch_size=batch_size, sampler=position[order].tolist(), num_workers=workers,
                      persistent_workers=False)


def tensor_loader(images: Tensor, labels: Tensor, order: Tensor, batch_size: int) -> DataLoader:
    """cnnlab's own loader (one gather a batch, no workers), over in-memory or memory-mapped images."""
    return DataLoader(TensorImages(images, labels), batch_size=batch_size, sampler=order.tolist(),
                      collate_fn=lambda b: b)


def one_pass(loader: DataLoader) -> tuple[float, Tensor]:
    """Seconds to draw every batch, and the first batch (to check that every method read the same images)."""
    first: list[Tensor] = []

    def draw() -> None:
        for x, _ in loader:
            if not first:
                first.append(x)

    return once(draw), first[0]


def memcpy_pass(src: Tensor, batch_size: int) -> float:
    """Seconds to copy the same bytes, batch by batch, into a preallocated buffer: the floor."""
    flat = src.reshape(len(src), -1)
    out = torch.empty((batch_size, flat.shape[1]), dtype=flat.dtype)

    def copy() -> None:
        for i in range(0, len(flat), batch_size):
            part = flat[i: i + batch_size]
            out[: len(part)].copy_(part)

    return once(copy)


def h2d_bandwidth(batch_bytes: int, repeats: int) -> list[dict[str, Any]] | None:
    """GB/s of host->device copies: pageable vs pinned memory, synchronous vs non_blocking (all copies
    queued, then one synchronize), for one batch and for H2D_BYTES. None without a GPU."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    rows = []
    for nbytes in (batch_bytes, H2D_BYTES):
        pageable = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)
        pinned = pageable.pin_memory()
        dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        count = max(1, (1 << 30) // nbytes)  # about 1 GiB moved per timing
        for mode, src, blocking in (("pageable, sync", pageable, True), ("pinned, sync", pinned, True),
                                    ("pinned, non_blocking", pinned, False)):
            def copies(src=src, blocking=blocking) -> None:
                for _ in range(count):
                    dst.copy_(src, non_blocking=not blocking)
                    if blocking:
                        torch.cuda.synchronize()

            secs = median_seconds(copies, dev, repeats, warmup=1)
            rows.append({"bytes": nbytes, "mode": mode, "gb_per_s": nbytes * count / secs / 1e9})
    return rows


def gather_pass(images: Tensor, batches: list[Tensor]) -> tuple[float, Tensor]:
    """Seconds to gather every batch (one index_select each, the index tensors made beforehand): the
    reader alone, without a DataLoader's per-batch Python."""
    first: list[Tensor] = []

    def gather() -> None:
        for idx in batches:
            x = images.index_select(0, idx)
            if not first:
                first.append(x)

    return once(gather), first[0]


def packed(path: Path, fn: Callable[[Tensor, Tensor], tuple[float, Tensor]], passes: int = 1) -> Callable[[], tuple[float, Tensor]]:
    """`fn(images, labels)` over a fresh map of the pack's train split, opened untimed; with `passes`
    2 the second pass is timed (its pages already mapped: a run's later epochs)."""
    def run() -> tuple[float, Tensor]:
        split = open_pack(path).split("train")
        for _ in range(passes):
            out = fn(split.images, split.labels)
        return out

    return run
