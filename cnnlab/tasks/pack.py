"""`cnnlab pack`: a data source's splits (or a recipe's data: section) -> one .cnnpack file or shards;
`--verify` checks one."""
from __future__ import annotations

import time
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

from cnnlab import pack, shipped
from cnnlab.data import SOURCES
from cnnlab.data.module import channel_stats, unreadable
from cnnlab.data.sources import resize
from cnnlab.data.spec import DataSpec
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Interrupted, UserError
from cnnlab.pack.format import SUFFIX
from cnnlab.recipe import load as load_recipe

SPLITS = ("train", "test")
SELECTION = ("classes", "subset", "test_subset", "val_split")  # applied when a recipe reads the pack, not here


def data_spec(src: str, flags: dict[str, Any], overrides: list[str]) -> DataSpec:
    """SRC is a source name (with --root, --image-size, ... as data: keys) or a recipe file (its data:
    section, with --set overrides); either way it is validated as a recipe's data section."""
    if src.endswith((".yaml", ".yml")):
        if not shipped.resolve(src).is_file():
            raise UserError(f"SRC: no recipe file {src} (shipped recipes: {', '.join(shipped.names())})")
        given = [k for k, v in flags.items() if v is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')}: give data keys of a recipe with --set data.{given[0]}=..., "
                            "or name a source instead of a recipe")
        return load_recipe(src, overrides).data
    data = {"source": src, **{k: v for k, v in flags.items() if v is not None}}
    return load_recipe(None, overrides, base={"data": data}, source="cnnlab pack").data


def parse_splits(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SPLITS]
    if not names or bad or len(set(names)) != len(names):
        raise UserError(f"--split {text!r}: a comma-separated list of distinct splits from {', '.join(SPLITS)}")
    return names


def _no_progress(total: int) -> ContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def run(spec: DataSpec, out: Path, splits: list[str], shards: int = 1,
        progress: Callable[[int], ContextManager[Callable[[int], None]]] = _no_progress) -> dict[str, Any]:
    """Read the source's splits whole (at data.image_size), pack them, and verify the result.
    `progress(total bytes)` is a context whose value is told how many bytes were just written."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"OUT: {out} is a folder; give the file to write, e.g. {out / ('data' + SUFFIX)}")
    if not out.parent.is_dir():
        raise UserError(f"OUT: the folder {out.parent} does not exist")
    if shards < 1:
        raise UserError(f"--shards {shards}: must be at least 1")
    state = {"whole": False}
    try:
        with interruptible("packing"):
            return _run(spec, out, splits, shards, progress, state)
    except Interrupted as e:
        if state["whole"]:
            raise e.kept(f"the pack at {out} was written whole but not read back; check it with "
                         f"cnnlab pack --verify {out}") from None
        raise e.kept(f"nothing was written at {out} and no temporary file is left; run the same command again") from None


def _run(spec: DataSpec, out: Path, splits: list[str], shards: int,
         progress: Callable[[int], ContextManager[Callable[[int], None]]], state: dict[str, bool]) -> dict[str, Any]:
    load, root = SOURCES.get(spec.source), Path(spec.root) if spec.root else None
    t0 = time.perf_counter()
    loaded = {name: load(root, name, spec.decode()) for name in splits}
    skipped = unreadable(*loaded.values(), policy=spec.bad_images)
    data = {}
    for name, s in loaded.items():
        images = resize(s.images, spec.image_size)
        if shards > len(s.labels):
            raise UserError(f"--shards {shards}: the {name} split has only {len(s.labels)} images")
        mean, std = channel_stats(images)
        data[name] = pack.SplitData(images, s.labels, mean=mean.tolist(), std=std.tolist())
    read_s = time.perf_counter() - t0
    first = next(iter(loaded.values()))
    meta = {"source": spec.source, "root": str(root) if root else None, "classes": first.classes,
            "decode": {"image_size": spec.image_size, "resize": spec.resize, "channels": spec.channels}}
    total = sum(d.images.nbytes + 2 * d.labels.numel() * 8 for d in data.values())
    t1 = time.perf_counter()
    with progress(total) as advance:
        written = pack.write(out, data, meta, shards, advance=advance)
    write_s = time.perf_counter() - t1
    state["whole"] = True  # a stop from here on leaves the whole pack at OUT, not yet read back
    header = pack.verify(out)  # read back: what was written is what the header says
    ignored = [k for k in SELECTION if getattr(spec, k) != DataSpec.model_fields[k].default]
    return {**_summary(out, header, written), "skipped": skipped, "read_s": read_s, "write_s": write_s,
            "mb_per_s": total / 2**20 / max(write_s, 1e-9), "not_applied": ignored}


def verify(path: Path) -> dict[str, Any]:
    """Check a pack's header, size and checksums; its summary, or a UserError naming the problem."""
    t0 = time.perf_counter()
    header = pack.verify(Path(path))
    return {**_summary(path, header, pack.files_of(path, header)), "ok": True, "seconds": time.perf_counter() - t0}


def _summary(path: Path, header: dict, files: list[Path]) -> dict[str, Any]:
    """What a pack holds (from its verified header) and the files it takes."""
    return {"out": str(path), "version": header["version"], "source": header.get("source"), "shape": header["shape"],
            "classes": header["classes"], "splits": {n: d["count"] for n, d in header["splits"].items()},
            "files": [{"file": str(f), "bytes": f.stat().st_size} for f in files], "sha256": pack.checksums(header)}
