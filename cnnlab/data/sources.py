"""Data sources by name: each returns a whole split as in-memory uint8 (N, C, H, W) images."""
from __future__ import annotations

import gzip
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cnnlab.errors import UserError
from cnnlab.registry import Registry

FASHION_MNIST_ROOTS = (Path("/usr/share/datasets/fashion-mnist"), Path("data/fashion-mnist"))
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 8192 * 8192  # 67M px (200 MB decoded as RGB uint8): a larger header is refused before decoding


@dataclass
class Split:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): image files left out, unreadable


Source = Callable[[Path | None, str], Split]
SOURCES: Registry[Source] = Registry("data source")


def resize(images: Tensor, size: int | None) -> Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) with antialiased bilinear interpolation."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped): big-endian header of dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path}: not an idx file of uint8 (magic {data[:4].hex()})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):  # plain or torchvision layout
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@SOURCES.register("fashion-mnist")
def fashion_mnist(root: Path | None, split: str) -> Split:
    """Zalando's Fashion-MNIST: 60k/10k 28x28 grayscale images of 10 clothing classes."""
    roots = [Path(root)] if root else [Path(os.environ["CNNLAB_FASHION_MNIST"])] if "CNNLAB_FASHION_MNIST" in os.environ else list(FASHION_MNIST_ROOTS)
    prefix = "train" if split == "train" else "t10k"
    for r in roots:
        img = _find_idx(r, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(r, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
            y = torch.from_numpy(_read_idx(lab).astype(np.int64))
            return Split(x, y, list(FASHION_MNIST_CLASSES))
    raise UserError(
        f"data.root: Fashion-MNIST idx files ({prefix}-images-idx3-ubyte.gz, ...) not found in "
        f"{', '.join(map(str, roots))}; install them with `apt-get install dataset-fashion-mnist` "
        "or `make data`, or set data.root to a folder that holds them"
    )


@SOURCES.register("digits")
def digits(root: Path | None, split: str) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images); a fixed seeded 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return Split(x[idx], y[idx], [str(i) for i in range(10)])


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message says why."""


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> Tensor:
    """(3, H, W) uint8 of an image file, or UnreadableImage. PIL's `open` reads only the header, so
    the size is checked before a single pixel is decoded; decoding errors never escape as tracebacks."""
    from PIL import Image

    if path.stat().st_size == 0:
        raise UnreadableImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning and palette notes: handled here
        try:
            im = Image.open(path)
        except Image.UnidentifiedImageError:
            raise UnreadableImage("not an image (no format PIL knows)") from None
        except Image.DecompressionBombError as e:  # PIL's own header check, at a limit far above max_pixels
            claimed = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(claimed[1]):,} px" if claimed else "its size"
            raise UnreadableImage(f"{size} is over the limit of {max_pixels:,} px") from None
        except Exception as e:
            raise UnreadableImage(f"not an image ({type(e).__name__}: {e})") from None
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableImage(f"{w}x{h} px is over the limit of {max_pixels:,} px")
            try:
                rgb = im.convert("RGB")  # decodes; grey and palette images become 3 channels
            except Exception as e:
                raise UnreadableImage(f"truncated or corrupt ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _class_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


@SOURCES.register("imagefolder")
def imagefolder(root: Path | None, split: str) -> Split:
    """Class-per-folder images: <root>/train/<class>/* and <root>/test/<class>/* (the test split's
    labels follow the training split's class names; a test class missing is fine, an unknown one is
    an error), or <root>/<class>/* for both splits, cut 80/20 with a fixed seed. Images are decoded at
    native size (resizing happens later); files that cannot be decoded are left out and listed in
    `Split.skipped` (the data module decides, by data.bad_images, whether that is an error)."""
    if root is None or not Path(root).is_dir():
        raise UserError(f"data.root: imagefolder needs an existing folder, got {root}")
    root = Path(root)
    has = {part: (root / part).is_dir() for part in ("train", "test")}
    if any(has.values()):
        if not all(has.values()):
            there, missing = ("train", "test") if has["train"] else ("test", "train")
            raise UserError(f"data.root: {root} has a {there}/ folder but no {missing}/ folder "
                            f"(expected {root}/train/<class>/ and {root}/test/<class>/, or {root}/<class>/)")
        base, classes = root / split, _class_folders(root / "train")
    else:
        base, classes = root, _class_folders(root)
    train_dir = root / "train" if any(has.values()) else root
    if not classes:
        raise UserError(f"data.root: no class folders in {train_dir} (expected {train_dir}/<class>/<image>.png)")
    if len(classes) < 2:
        raise UserError(f"data.root: a classifier needs at least 2 classes, {train_dir} has one class folder ({classes[0]})")
    folders = _class_folders(base)
    if not folders:
        raise UserError(f"data.root: no class folders in {base} (expected {base}/<class>/<image>.png)")
    unknown = [c for c in folders if c not in classes]
    if unknown:
        raise UserError(f"data.root: class '{unknown[0]}' ({base / unknown[0]}) is not a class of the training "
                        f"split; training classes: {', '.join(classes)}")
    images, labels, skipped = [], [], []
    for name in folders:
        files = [f for f in sorted((base / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        if not files:
            raise UserError(f"data.root: class folder {base / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        bad = []
        for f in files:
            try:
                images.append(read_image(f))
                labels.append(classes.index(name))
            except UnreadableImage as e:
                bad.append((str(f), str(e)))
        if len(bad) == len(files):
            raise UserError(f"data.root: no readable images in {base / name} ({len(bad)} unreadable, "
                            f"e.g. {bad[0][0]}: {bad[0][1]})")
        skipped += bad
    sizes = {tuple(im.shape[-2:]) for im in images}
    side = max(max(s) for s in sizes)
    # different sizes: resize each to the largest side now so they stack; data.image_size applies after
    x = torch.stack([resize(im.unsqueeze(0), side)[0] if tuple(im.shape[-2:]) != (side, side) else im
                     for im in images])
    y = torch.tensor(labels, dtype=torch.int64)
    if base is root:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        n_test = max(1, len(y) // 5)
        idx = perm[n_test:] if split == "train" else perm[:n_test]
        x, y = x[idx], y[idx]
    return Split(x, y, classes, skipped)


@SOURCES.register("cifar10")
def cifar10(root: Path | None, split: str) -> Split:
    """CIFAR-10 from torchvision's files under a user root (no download is attempted)."""
    from torchvision.datasets import CIFAR10

    if root is None:
        raise UserError("data.root: cifar10 needs data.root, the folder holding cifar-10-batches-py/")
    try:
        ds = CIFAR10(str(root), train=split == "train", download=False)
    except RuntimeError as e:
        raise UserError(f"data.root: CIFAR-10 not found or corrupt under {root} ({e})") from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))
