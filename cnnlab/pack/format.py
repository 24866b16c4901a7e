"""The `.cnnpack` file: a dataset's splits as contiguous fixed-size uint8 images, memory-mapped to read.

Layout of one file (all integers little-endian; every block starts on a 4 KiB boundary, so a block
maps straight onto pages):

    0      b"CNNPACK\\0"                      magic
    8      u32 version, u32 0
    16     u64 header offset, u64 header length, u32 CRC-32 of the header     (the preamble)
    4096   per split: pixels (count, C, H, W) uint8, labels (count,) int64, index (count,) int64
    ...    the header: UTF-8 JSON, last in the file

The header says what the blocks are: version, kind ("data", or "index" for a sharded pack), the
source, image shape and dtype, class names, and per split its count, the byte ranges of its three
blocks, its rows of the whole split (a shard holds a contiguous share), its normalisation
statistics, and the SHA-256 of the payload (every byte between the preamble and the header). The
index is each image's position in its source split (for an image folder, among its readable
files in sorted order). The header goes last because the checksum is known only once the payload is written; the
preamble, written last of all, points to it. A file is written under a temporary name and renamed
when complete, so an interrupted pack leaves nothing under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cnnlab.errors import UserError

MAGIC = b"CNNPACK\0"
VERSION = 1
ALIGN = 4096  # bytes: blocks start on page boundaries
PREAMBLE = struct.Struct("<8sII QQI")  # magic, version, 0, header offset, header length, header CRC-32
CHUNK = 64 << 20  # bytes written or hashed at a time
SUFFIX = ".cnnpack"


@dataclass
class SplitData:
    """One split to pack: images and labels in memory, and where each image came from."""

    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    index: Tensor | None = None  # (N,) int64: position in the source split; None = 0..N-1
    mean: list[float] = field(default_factory=list)  # per-channel normalisation statistics, [0, 1] units
    std: list[float] = field(default_factory=list)


def _pad(n: int) -> int:
    return -n % ALIGN


def shard_names(out: Path, shards: int) -> list[Path]:
    """Shard files beside the index file: data.cnnpack -> data-00000-of-00004.cnnpack, ..."""
    stem = out.name[: -len(SUFFIX)] if out.name.endswith(SUFFIX) else out.name
    return [out.with_name(f"{stem}-{i:05d}-of-{shards:05d}{SUFFIX}") for i in range(shards)]


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_file(path: Path, header: dict, blocks: list[tuple[str, str, bytes | memoryview]],
                advance: Callable[[int], None]) -> dict:
    """Write one pack file at `path` (already a temporary name): blocks in order, header last,
    preamble at the end; `header[splits][name][block] = [offset, nbytes]` and sha256 are filled in."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        f.write(b"\0" * ALIGN)
        for split, block, data in blocks:
            start = f.tell()
            view = memoryview(data).cast("B")
            for i in range(0, len(view), CHUNK):
                part = view[i: i + CHUNK]
                f.write(part)
                h.update(part)
                advance(len(part))
            pad = b"\0" * _pad(f.tell())
            f.write(pad)
            h.update(pad)
            header["splits"][split][block] = [start, len(view)]
        header["sha256"] = h.hexdigest()
        text = json.dumps(header, separators=(",", ":")).encode()
        offset = f.tell()
        f.write(text)
        f.seek(0)
        f.write(PREAMBLE.pack(MAGIC, VERSION, 0, offset, len(text), zlib.crc32(text)))
        f.flush()
        os.fsync(f.fileno())
    return header


def _blocks(splits: dict[str, SplitData], rows: dict[str, tuple[int, int]]) -> list[tuple[str, str, memoryview]]:
    out = []
    for name, s in splits.items():
        a, b = rows[name]
        index = s.index if s.index is not None else torch.arange(len(s.labels))
        out += [(name, "pixels", s.images[a:b].contiguous().numpy().data),
                (name, "labels", s.labels[a:b].to(torch.int64).contiguous().numpy().data),
                (name, "index", index[a:b].to(torch.int64).contiguous().numpy().data)]
    return out


def write(out: Path, splits: dict[str, SplitData], meta: dict, shards: int = 1,
          advance: Callable[[int], None] = lambda n: None) -> list[Path]:
    """Pack `splits` into `out` (one file), or into `shards` files of contiguous rows of every split
    and an index file `out` that lists them. Everything is written under temporary names and renamed
    at the end, the file at `out` last; on any error (or Ctrl-C) the temporary files are removed.
    Returns the files written."""
    out = Path(out)
    first = next(iter(splits.values()))
    shape = list(first.images.shape[1:])
    for name, s in splits.items():
        if s.images.dtype != torch.uint8 or s.images.ndim != 4 or list(s.images.shape[1:]) != shape:
            raise ValueError(f"split {name}: images must be uint8 (N, {', '.join(map(str, shape))}), "
                             f"got {s.images.dtype} {tuple(s.images.shape)}")
    base = {"format": "cnnpack", "version": VERSION, **meta, "shape": shape, "dtype": "uint8"}

    def split_header(s: SplitData, a: int, b: int) -> dict:
        return {"count": b - a, "rows": [a, b], "total": len(s.labels), "mean": s.mean, "std": s.std}

    def cuts(n: int) -> list[tuple[int, int]]:
        edges = torch.arange(n).tensor_split(shards)
        return [(int(e[0]) if len(e) else n, int(e[-1]) + 1 if len(e) else n) for e in edges]

    per_split = {name: cuts(len(s.labels)) for name, s in splits.items()}
    targets = shard_names(out, shards) if shards > 1 else [out]
    finals = targets + ([out] if shards > 1 else [])  # the index file last
    temps = [_tmp(f) for f in finals]
    try:
        headers = []
        for i, target in enumerate(targets):
            rows = {name: per_split[name][i] for name in splits}
            header = {**base, "kind": "data", "splits": {n: split_header(s, *rows[n]) for n, s in splits.items()}}
            if shards > 1:
                header["shard"] = [i, shards]
            headers.append(_write_file(temps[i], header, _blocks(splits, rows), advance))
        if shards > 1:
            index = {**base, "kind": "index", "splits": {n: {"count": len(s.labels), "mean": s.mean, "std": s.std}
                                                         for n, s in splits.items()},
                     "shards": [{"file": t.name, "size": temps[i].stat().st_size, "sha256": h["sha256"],
                                 "rows": {n: h["splits"][n]["rows"] for n in splits}}
                                for i, (t, h) in enumerate(zip(targets, headers))]}
            _write_file(temps[-1], index, [], advance)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)  # the file at `out` is the last to appear
    except OSError as e:  # a full disk, a folder without write permission
        raise UserError(f"{out}: cannot write the pack ({e.strerror or e}); nothing was left under its name") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return finals


# --------------------------------------------------------------------------- reading


def _bad(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; pack it again with `cnnlab pack`")


def read_header(path: Path) -> dict:
    """The header of a pack file, after checking the magic, version, header checksum and that the
    file is as long as the header says (a truncated file is refused here, before any pixel is read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pack file (write one with `cnnlab pack SRC {path}`)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        pre = f.read(PREAMBLE.size)
        if len(pre) < PREAMBLE.size or not pre.startswith(MAGIC):
            if len(pre) < len(MAGIC) or pre[: len(MAGIC)] != MAGIC:
                raise UserError(f"{path}: not a cnnpack file (its first bytes are {pre[:8]!r}, not {MAGIC!r})")
            raise _bad(path, f"truncated: {size} bytes, shorter than the {PREAMBLE.size}-byte preamble")
        _, version, _, offset, length, crc = PREAMBLE.unpack(pre)
        if version != VERSION:
            raise UserError(f"{path}: cnnpack format version {version}; this cnnlab reads version {VERSION} "
                            "(pack the source again with this cnnlab)")
        if offset + length != size:
            what = "truncated" if offset + length > size else "has trailing bytes"
            raise _bad(path, f"{what}: {size:,} bytes, the preamble says {offset + length:,}")
        f.seek(offset)
        text = f.read(length)
    if zlib.crc32(text) != crc:
        raise _bad(path, "corrupt header (its CRC-32 does not match)")
    try:
        header = json.loads(text)
    except ValueError:
        raise _bad(path, "corrupt header (not JSON)") from None
    for name, s in header.get("splits", {}).items():
        for block in ("pixels", "labels", "index") if header.get("kind") == "data" else ():
            start, n = s[block]
            if start + n > offset:
                raise _bad(path, f"corrupt header ({name} {block} runs past the payload)")
    return header


def payload_sha256(path: Path) -> str:
    """SHA-256 of the payload: every byte between the preamble's page and the header."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        header_offset = PREAMBLE.unpack(f.read(PREAMBLE.size))[3]
        f.seek(ALIGN)
        left = header_offset - ALIGN
        while left > 0:
            part = f.read(min(CHUNK, left))
            if not part:
                break
            h.update(part)
            left -= len(part)
    return h.hexdigest()


def files_of(path: Path, header: dict) -> list[Path]:
    """The data files of the pack at `path` whose header is `header`: the file itself, or the shards
    its index lists."""
    if header["kind"] == "index":
        return [Path(path).with_name(s["file"]) for s in header["shards"]]
    return [Path(path)]


def checksums(header: dict) -> str | list[str]:
    """The payload SHA-256 of a pack: one, or one per shard for an index file."""
    return [s["sha256"] for s in header["shards"]] if header["kind"] == "index" else header["sha256"]


def verify(path: Path) -> dict:
    """Check every file of a pack: preamble, header, size and payload checksum (and for a sharded
    pack, that each shard is the one its index recorded). Returns the header; UserError on a problem."""
    path = Path(path)
    header = read_header(path)
    shards = header.get("shards", [{"file": path.name, "sha256": header.get("sha256")}])
    for s in shards:
        f = path.with_name(s["file"])
        h = read_header(f) if f != path else header
        if h["kind"] != "data":
            raise _bad(f, "a shard that is not a data file")
        if "size" in s and f.stat().st_size != s["size"]:
            raise _bad(f, f"{f.stat().st_size:,} bytes, its index {path.name} says {s['size']:,}")
        got = payload_sha256(f)
        if got != h["sha256"] or got != s["sha256"]:
            raise _bad(f, f"corrupt: the payload's SHA-256 is {got[:12]}…, the header says {h['sha256'][:12]}…")
    return header


@dataclass
class PackedSplit:
    """A split of a pack, memory-mapped: `parts` are (images, labels, index) per file, images a map of
    the file's pages (read when indexed, never as a whole); batches are gathered by index."""

    parts: list[tuple[Tensor, Tensor, Tensor]]
    starts: list[int]  # first row of each part

    def __len__(self) -> int:
        return self.starts[-1] + len(self.parts[-1][1]) if self.parts else 0

    @property
    def images(self) -> Tensor:
        """(N, C, H, W) uint8: the map itself for one file (zero-copy); shards are joined (a copy)."""
        return self.parts[0][0] if len(self.parts) == 1 else torch.cat([p[0] for p in self.parts])

    @property
    def labels(self) -> Tensor:
        return torch.cat([p[1] for p in self.parts])

    @property
    def index(self) -> Tensor:
        return torch.cat([p[2] for p in self.parts])

    def rows(self, a: int, b: int) -> Tensor:
        """Rows a..b-1 of one file: a view of the map, no copy."""
        for (x, _, _), s in zip(self.parts, self.starts):
            if s <= a and b <= s + len(x):
                return x[a - s: b - s]
        return self.take(torch.arange(a, b))

    def take(self, idx: Tensor) -> Tensor:
        """The images at `idx` (any order), gathered from the map(s)."""
        if len(self.parts) == 1:
            return self.parts[0][0].index_select(0, idx)
        x0 = self.parts[0][0]
        res = torch.empty((len(idx), *x0.shape[1:]), dtype=x0.dtype)
        for (x, _, _), s in zip(self.parts, self.starts):
            where = torch.nonzero((idx >= s) & (idx < s + len(x))).flatten()
            if len(where):
                res[where] = x.index_select(0, idx[where] - s)
        return res


def _map(path: Path, start: int, nbytes: int, dtype, shape: tuple[int, ...]) -> Tensor:
    if nbytes == 0:
        return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
    # copy-on-write: writable (as torch wants), never written back to the file
    return torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", offset=start, shape=shape))


@dataclass
class Pack:
    path: Path
    header: dict
    splits: dict[str, PackedSplit]

    @property
    def classes(self) -> list[str]:
        return list(self.header["classes"])

    def split(self, name: str) -> PackedSplit:
        if name not in self.splits:
            raise UserError(f"{self.path}: holds the split(s) {', '.join(self.splits)}, not {name}; "
                            f"pack it with --split {','.join([*self.splits, name])}")
        return self.splits[name]


def open_pack(path: Path, check: bool = False) -> Pack:
    """Map a pack (one file, or the shards of an index file). The preamble, header and size of every
    file are always checked; `check` also verifies the payload checksums (reads every byte once)."""
    path = Path(path)
    header = verify(path) if check else read_header(path)
    files = files_of(path, header)
    shape = tuple(header["shape"])
    parts: dict[str, list] = {name: [] for name in header["splits"]}
    starts: dict[str, list[int]] = {name: [] for name in header["splits"]}
    for f in files:
        h = header if f == path else read_header(f)
        for name, s in h["splits"].items():
            n = s["count"]
            images = _map(f, *s["pixels"], np.uint8, (n, *shape))
            labels = torch.from_numpy(np.fromfile(f, dtype="<i8", count=n, offset=s["labels"][0]).astype(np.int64))
            index = torch.from_numpy(np.fromfile(f, dtype="<i8", count=n, offset=s["index"][0]).astype(np.int64))
            parts[name].append((images, labels, index))
            starts[name].append(s["rows"][0])
    return Pack(path, header, {n: PackedSplit(parts[n], starts[n]) for n in parts})
