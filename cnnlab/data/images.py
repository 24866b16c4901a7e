"""Image files decoded straight to the size a run needs, one at a time, in parallel, with a cache.

A 12-megapixel JPEG is never decoded whole to reach 224 px: PIL's `draft` has the JPEG decoder scale
by 1/2, 1/4 or 1/8 in the DCT domain to the smallest size still at least the target, and only that is
resized. Memory is the output tensor plus one image per decoding thread. Every file is upright (EXIF
orientation applied) and in the recipe's channel count, whatever its mode; its header size is checked
against a pixel limit before any pixel is decoded.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnlab.errors import UserError
from cnnlab.io import load_tensors, save_tensors

MAX_PIXELS = 8192 * 8192  # 67M px (200 MB decoded as RGB uint8): a larger header is refused before decoding
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
RESIZE_POLICIES = ("shorter", "longer", "stretch")
CACHE_VERSION = 1  # bump when decoding changes what a cached tensor would hold
PROGRESS_FROM = 200  # files; smaller folders decode in a moment


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Decode:
    """How files become a uint8 (N, C, size, size) tensor."""

    size: int | None = None  # output side (px); None = native, which every file must share
    resize: str = "shorter"  # shorter: shorter side to size, centre crop; longer: longer side, pad; stretch
    channels: int = 3  # 3 = RGB, 1 = luma (ITU-R 601)
    max_pixels: int = MAX_PIXELS
    cache_dir: str | None = None  # decoded tensors, keyed by files, sizes, mtimes and these settings


def _open(path: Path, max_pixels: int):
    """The PIL image of `path` with only its header read, or UnreadableImage."""
    from PIL import Image

    if path.stat().st_size == 0:
        raise UnreadableImage("empty file")
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
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise UnreadableImage(f"{w}x{h} px is over the limit of {max_pixels:,} px")
    return im


def to_channels(im, channels: int):
    """Any PIL mode -> RGB (channels 3) or L (channels 1). Alpha (RGBA, LA, PA, palette transparency)
    is composited on BACKGROUND; 16- and 32-bit greyscale is scaled to 8 bits, not clipped; CMYK, YCbCr,
    palette and 1-bit images go through PIL's conversions."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    return im.convert("RGB" if channels == 3 else "L")


def _fit(im, size: int, policy: str):
    """Resize (antialiased bilinear) and crop or pad to size x size by `policy`."""
    from PIL import Image

    w, h = im.size
    if policy == "stretch":
        return im.resize((size, size), Image.BILINEAR)
    s = size / (min(w, h) if policy == "shorter" else max(w, h))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    im = im.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else im
    if policy == "shorter":  # centre crop, as torchvision's Resize(size) + CenterCrop(size)
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))
    canvas = Image.new(im.mode, (size, size))  # longer: the whole image, centred on black
    canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def read_image(path: Path, d: Decode = Decode()) -> tuple[Tensor, tuple[int, int]]:
    """((C, S, S) uint8, the file's (width, height) upright), or UnreadableImage naming the problem.
    JPEGs are decoded at the smallest DCT scale that still covers the target."""
    from PIL import ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning and palette notes: handled here
        im = _open(Path(path), d.max_pixels)
        with im:
            w, h = im.size
            try:
                if d.size is not None:
                    s = d.size / (max(w, h) if d.resize == "longer" else min(w, h))
                    im.draft(None, (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))  # JPEG only; no-op else
                up = ImageOps.exif_transpose(im)  # decodes
                if up.size[0] != im.size[0]:  # rotated a quarter turn: the file's width is its height
                    w, h = h, w
                out = to_channels(up, d.channels)
                if d.size is not None:
                    out = _fit(out, d.size, d.resize)
                a = np.asarray(out)
            except Exception as e:
                raise UnreadableImage(f"truncated or corrupt ({type(e).__name__}: {e})") from None
    x = torch.from_numpy(a.copy())
    return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).contiguous(), (w, h)


@dataclass
class Decoded:
    images: Tensor  # (n_ok, C, S, S) uint8, in file order
    ok: list[int]  # indices into the file list of the decoded files
    sizes: list[tuple[int, int]]  # their original (width, height), upright
    bad: list[tuple[str, str]]  # (file, reason) of the files that could not be decoded
    cached: bool = False


def cache_key(files: list[Path], d: Decode) -> str:
    """Everything that decides the decoded tensor: each file's path, size and mtime, and the settings."""
    h = hashlib.sha256(f"cnnlab-images:{CACHE_VERSION}".encode())
    settings = {k: v for k, v in asdict(d).items() if k != "cache_dir"}
    h.update(repr(sorted(settings.items())).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _safe_read(path: Path, d: Decode) -> tuple[Tensor, tuple[int, int]] | str:
    try:
        return read_image(path, d)
    except UnreadableImage as e:
        return str(e)


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_files(files: list[Path], d: Decode) -> Decoded:
    """Every file decoded (parallel threads: PIL releases the GIL while it decodes and resizes),
    written into one preallocated tensor; from the cache when `d.cache_dir` holds this exact list."""
    path = Path(d.cache_dir) / f"{cache_key(files, d)}.pt" if d.cache_dir and files else None
    if path is not None and path.is_file():
        try:
            c = load_tensors(path)
            return Decoded(c["images"], c["ok"], [tuple(s) for s in c["sizes"]], [tuple(b) for b in c["bad"]], True)
        except Exception:  # a damaged cache file is decoded again and rewritten
            pass
    out: Tensor | None = None  # (len(files), C, S, S), allocated at the first decoded image
    ok, sizes, bad = [], [], []
    with ThreadPoolExecutor(max_workers=workers()) as pool, _progress(len(files)) as advance:
        for i, r in enumerate(pool.map(lambda f: _safe_read(f, d), files)):
            advance()
            if isinstance(r, str):
                bad.append((str(files[i]), r))
                continue
            x, wh = r
            if out is None:
                out = torch.empty((len(files), *x.shape), dtype=torch.uint8)
            elif x.shape != out.shape[1:]:  # only at native size (d.size None)
                raise UserError(f"data.image_size: {files[i]} is {x.shape[2]}x{x.shape[1]} px, {files[ok[0]]} "
                                f"{out.shape[3]}x{out.shape[2]}; images of different sizes need an image_size")
            out[len(ok)] = x
            ok.append(i)
            sizes.append(wh)
    if out is None:
        images = torch.empty(0, d.channels, d.size or 1, d.size or 1, dtype=torch.uint8)
    else:
        images = out[: len(ok)].clone() if bad else out  # a clone frees the rows of unreadable files
    decoded = Decoded(images, ok, sizes, bad)
    if path is None:
        return decoded
    # imported only to write a cache: Lightning takes seconds to import, which the recipe check and an
    # uncached decode never need
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # the other processes of a parallel run decode, never write
        save_tensors(path, {"images": images, "ok": ok, "sizes": [list(s) for s in sizes], "bad": [list(b) for b in bad]})
    return decoded


class _progress:
    """A transient rich progress bar for folders of PROGRESS_FROM files or more (silent when not a
    terminal); the context value advances it by one file."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __enter__(self):
        if self.total < PROGRESS_FROM:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task(f"decoding {self.total} images", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
