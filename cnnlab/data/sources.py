"""Data sources by name: each returns a whole split as in-memory uint8 (N, C, H, W) images."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cnnlab.data.images import Decode, decode_files
from cnnlab.errors import UserError
from cnnlab.pack import open_pack
from cnnlab.registry import Registry

FASHION_MNIST_ROOTS = (Path("/usr/share/datasets/fashion-mnist"), Path("data/fashion-mnist"))
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Split:
    """One split: uint8 (N, C, H, W) images, int64 (N,) labels and the class names, with what loading
    found (image files left out as unreadable, each file's original size, whether the decoded tensors
    came from the cache). The images are in memory, or rows of a memory-mapped pack (`mapped`): then
    `base` is the whole packed split (a map of the file) and `rows` this split's images in it (None:
    all, in order). Subsets compose rows and read nothing; the data module's loaders and statistics
    gather rows as they go. `images` gathers every row, once, for whatever asks for all of them
    (augmentation fitting, a feature cache); a resized split holds its images like any other."""

    def __init__(self, images: Tensor | None, labels: Tensor, classes: list[str],
                 skipped: list[tuple[str, str]] | None = None, sizes: list[tuple[int, int]] | None = None,
                 cached: bool = False, *, base: Tensor | None = None, rows: Tensor | None = None):
        if (images is None) == (base is None):
            raise ValueError("a split holds its images or a map of them (base), not both or neither")
        self._images, self.base, self.rows = images, base, rows
        self.labels, self.classes = labels, classes
        self.skipped = skipped if skipped is not None else []  # (file, reason)
        self.sizes = sizes if sizes is not None else []  # image files: each one's (width, height)
        self.cached = cached

    @property
    def images(self) -> Tensor:
        if self._images is None:
            self._images = self.base if self.rows is None else self.base.index_select(0, self.rows)
        return self._images

    @images.setter
    def images(self, value: Tensor) -> None:
        self._images = value

    @property
    def mapped(self) -> bool:
        """True while the images are read from a pack's map (nothing gathered whole)."""
        return self._images is None

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W), without reading a pixel."""
        return (len(self.labels), *self.base.shape[1:]) if self.mapped else tuple(self._images.shape)

    @property
    def nbytes(self) -> int:
        one = self.base[:1].nbytes if self.mapped else self._images[:1].nbytes
        return len(self.labels) * one + self.labels.nbytes

    def take(self, idx: Tensor) -> "Split":
        """The images and labels at `idx` (rows of the map, when mapped: nothing is read)."""
        if not self.mapped:
            return Split(self._images[idx], self.labels[idx], self.classes)
        return Split(None, self.labels[idx], self.classes, base=self.base, rows=idx if self.rows is None else self.rows[idx])

    def chunks(self, n: int):
        """The images, n at a time, in order."""
        if not self.mapped:
            return self._images.split(n)
        rows = self.rows if self.rows is not None else torch.arange(len(self.labels))
        return (self.base.index_select(0, r) for r in rows.split(n))


Source = Callable[[Path | None, str, Decode], Split]  # sources of fixed-size arrays ignore Decode
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
def fashion_mnist(root: Path | None, split: str, decode: Decode = Decode()) -> Split:
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
def digits(root: Path | None, split: str, decode: Decode = Decode()) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images); a fixed seeded 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return Split(x[idx], y[idx], [str(i) for i in range(10)])


def _class_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


@SOURCES.register("imagefolder")
def imagefolder(root: Path | None, split: str, decode: Decode = Decode()) -> Split:
    """Class-per-folder images: <root>/train/<class>/* and <root>/test/<class>/* (the test split's
    labels follow the training split's class names; a test class missing is fine, an unknown one is
    an error), or <root>/<class>/* for both splits, cut 80/20 by file with a fixed seed. Only the
    split's files are decoded, each straight to `decode.size` (see data/images.py); files that cannot
    be decoded are left out and listed in `Split.skipped` (the data module decides, by
    data.bad_images, whether that is an error)."""
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
    files, labels = [], []
    for name in folders:
        found = [f for f in sorted((base / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        if not found:
            raise UserError(f"data.root: class folder {base / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [classes.index(name)] * len(found)
    if base is root:  # one folder for both splits: the split's share of the files, by a fixed seed
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = max(1, len(files) // 5)
        keep = sorted(perm[n_test:] if split == "train" else perm[:n_test])
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    d = decode_files(files, decode)
    y = torch.tensor([labels[i] for i in d.ok], dtype=torch.int64)
    label_of = dict(zip(map(str, files), labels))
    for c in sorted(set(labels)):
        if not (y == c).any():
            bad = [b for b in d.bad if label_of[b[0]] == c]
            raise UserError(f"data.root: no readable images in {base / classes[c]} ({len(bad)} unreadable, "
                            f"e.g. {bad[0][0]}: {bad[0][1]})")
    return Split(d.images, y, classes, d.bad, d.sizes, d.cached)


@SOURCES.register("cifar10")
def cifar10(root: Path | None, split: str, decode: Decode = Decode()) -> Split:
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


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of pack files whose checksum passed here


@SOURCES.register("packed")
def packed(root: Path | None, split: str, decode: Decode = Decode()) -> Split:
    """A file written by `cnnlab pack` (data.root: the .cnnpack file). The split's images are a
    memory map of the file: a subset reads only its own rows. The payload's checksum is verified
    once per process, so a corrupt file stops the run before training on it."""
    if root is None:
        raise UserError("data.root: the packed source needs data.root, the .cnnpack file (`cnnlab pack SRC OUT.cnnpack` writes one)")
    st = Path(root).stat() if Path(root).is_file() else None
    key = (str(Path(root).resolve()), st.st_size, st.st_mtime_ns) if st else None
    pack = open_pack(Path(root), check=key not in _VERIFIED)
    _VERIFIED.add(key)
    s = pack.split(split)
    return Split(None, s.labels, pack.classes, base=s.images)
