"""`cnnlab bench-data`: the same training images read by every path side by side (PNG files through a
PIL DataLoader, a packed file cold and warm, in-memory tensors, a plain copy), host->device copies
when a GPU is here; bench_data.json and bench_data.png in a run folder."""
from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from cnnlab.bench.timing import interleaved, ratio
from cnnlab.data.images import workers as cpu_workers
from cnnlab.env import cpu_name, versions
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json
from cnnlab.recipe import Recipe

# (key, what it is, where the bytes come from, cache): cold = page cache dropped first; warm = the
# file in the page cache, a fresh map (a new run's first epoch); hot = the map's pages already
# touched by a previous pass (a run's later epochs)
METHODS = [
    ("png-cold", "PNG files, PIL DataLoader", "files", "cold"),
    ("png-warm", "PNG files, PIL DataLoader", "files", "warm"),
    ("packed-loader-cold", "packed file, cnnlab DataLoader", "pack", "cold"),
    ("packed-loader-warm", "packed file, cnnlab DataLoader", "pack", "warm"),
    ("packed-gather-cold", "packed file, gather", "pack", "cold"),
    ("packed-gather-warm", "packed file, gather", "pack", "warm"),
    ("packed-gather-hot", "packed file, gather", "pack", "hot"),
    ("memory-loader", "in-memory tensors, cnnlab DataLoader", "memory", "in RAM"),
    ("memory-gather", "in-memory tensors, gather", "memory", "in RAM"),
    ("memcpy", "plain copy of the same bytes", "memory", "in RAM"),
]


def run(recipe: Recipe, export_folder: Path | None = None, limit: int | None = None, repeats: int = 5,
        workers: int | None = None, out_dir: str = "runs", keep: bool = False,
        on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure every method `repeats` times, interleaved; medians, ratios and the targets' checks.
    The pack (and the PNG folder, unless --export-folder names one) are made in the run folder and
    removed at the end unless `keep`."""
    workers = workers if workers is not None else cpu_workers()
    if repeats < 1 or workers < 0 or (limit is not None and limit < 1):
        raise UserError("--repeats and --limit must be at least 1, --workers at least 0")
    # the data module and the readers load Lightning (seconds): after the flags are checked
    from cnnlab.data import ImageDataModule

    on_step("loading the recipe's training images")
    dm = ImageDataModule(recipe.data, seed=recipe.seed)
    dm.setup("fit")
    images, labels = dm.train.images, dm.train.labels
    if limit is not None:
        images, labels = images[:limit].clone(), labels[:limit].clone()
    n, batch = len(labels), min(recipe.data.batch_size, len(labels))
    folder = new_run_dir(out_dir, "bench-data")
    scratch = folder / "data"
    scratch.mkdir()
    png = Path(export_folder) if export_folder else scratch / "png"
    try:
        with interruptible("benchmarking data paths"):
            times, same, exported, drop_how, h2d = _measure(recipe, images, labels, dm.train.classes, png, scratch,
                                                            batch, workers, repeats, on_step)
    except Interrupted as e:  # nothing half-measured is kept: the record says so
        shutil.rmtree(scratch, ignore_errors=True)
        write_json(folder / "bench_data.json", {"run_dir": str(folder), "interrupted": e.record()})
        raise e.kept(f"nothing was measured to the end; {folder / 'bench_data.json'} is marked interrupted "
                     "and the scratch pack and PNG files were removed")
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    nbytes = images.nbytes
    rows = []
    for key, what, where, cache in METHODS:
        med = statistics.median(times[key])
        rows.append({"method": key, "what": what, "bytes_from": where, "cache": cache,
                     "seconds": times[key], "median_s": med, "images_per_s": n / med, "mb_per_s": nbytes / 2**20 / med,
                     "x_png_warm": ratio(times, "png-warm", key), "x_memcpy_time": ratio(times, key, "memcpy")})
    results = {
        "run_dir": str(folder), "images": n, "shape": list(images.shape[1:]), "bytes": nbytes, "batch_size": batch,
        "repeats": repeats, "png_workers": workers, "png_folder": str(png), "png_exported_now": exported,
        "page_cache": sorted(set(drop_how)), "rows": rows, "same_images": same,
        # each a median of the rounds' own ratios: the methods of one round ran seconds apart
        "targets": {"packed_over_png": ratio(times, "png-warm", "packed-loader-warm"),
                    "memcpy_over_packed": ratio(times, "packed-gather-warm", "memcpy"),
                    "memcpy_over_packed_hot": ratio(times, "packed-gather-hot", "memcpy")},
        "h2d": h2d, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "versions": versions(),
    }
    write_json(folder / "bench_data.json", results)
    from cnnlab.report.bench_data import plot_bench_data

    plot_bench_data(results, folder / "bench_data.png")
    return results


def _measure(recipe: Recipe, images: torch.Tensor, labels: torch.Tensor, classes: list[str], png: Path, scratch: Path,
             batch: int, workers: int, repeats: int, on_step: Callable[[str], None]):
    """Export, pack, and time every method interleaved; (times, same images, exported now, cache drops, h2d)."""
    from cnnlab import pack
    from cnnlab.bench import data as b
    from cnnlab.data.module import channel_stats

    n = len(labels)
    on_step(f"exporting {n:,} images as PNG files to {png}")
    exported = b.export_pngs(images, labels, png)
    packed_path = scratch / "train.cnnpack"
    mean, std = channel_stats(images)
    on_step(f"packing {n:,} images into {packed_path}")
    pack.write(packed_path, {"train": pack.SplitData(images, labels, mean=mean.tolist(), std=std.tolist())},
               {"source": recipe.data.source, "classes": classes})
    order = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed))
    batches = list(order.split(batch))
    pngs = [p for p in png.rglob("*.png")]
    drop_how: list[str] = []
    before = {k: (lambda paths=pngs if k.startswith("png") else [packed_path]: drop_how.append(b.drop_cache(paths)))
              for k, _, _, cache in METHODS if cache == "cold"}
    loader = lambda x, y: b.one_pass(b.tensor_loader(x, y, order, batch))  # noqa: E731
    gather = lambda x, y: b.gather_pass(x, batches)  # noqa: E731
    png_pass = lambda: b.one_pass(b.png_loader(png, order, batch, workers, images.shape[1]))  # noqa: E731
    memory = images.clone()  # its own copy, not the module's (the same bytes, in RAM)
    fns = {"png-cold": png_pass, "png-warm": png_pass,
           "packed-loader-cold": b.packed(packed_path, loader), "packed-loader-warm": b.packed(packed_path, loader),
           "packed-gather-cold": b.packed(packed_path, gather), "packed-gather-warm": b.packed(packed_path, gather),
           "packed-gather-hot": b.packed(packed_path, gather, passes=2),
           "memory-loader": lambda: loader(memory, labels), "memory-gather": lambda: gather(memory, labels),
           "memcpy": lambda: (b.memcpy_pass(memory, batch), None)}
    firsts: dict[str, torch.Tensor] = {}

    def timed(key: str) -> Callable[[], float]:
        def f() -> float:
            secs, first = fns[key]()
            if first is not None:
                firsts[key] = first
            return secs
        return f

    times = interleaved({k: timed(k) for k in fns}, repeats, before,
                      on_step=lambda k: on_step(f"measuring {k}"))
    expected = images[batches[0]]
    same = {k: bool(torch.equal(v, expected)) for k, v in firsts.items()}
    if not all(same.values()):
        raise RuntimeError(f"the methods read different images: {same}")  # a bug, not the user's
    h2d = b.h2d_bandwidth(images[:batch].nbytes, repeats)
    return times, same, exported, drop_how, h2d
