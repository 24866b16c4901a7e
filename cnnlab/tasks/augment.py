"""`cnnlab augment`: look at the recipe's augmentation (grid), measure it (bench), and see what
each op buys in test accuracy at an equal training budget (ablate)."""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cnnlab import runinfo
from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.data import ImageDataModule
from cnnlab.data.module import TensorImages, _batch
from cnnlab.errors import UserError
from cnnlab.recipe import Recipe, validate


def prepare(recipe: Recipe) -> tuple[ImageDataModule, Pipeline]:
    """The recipe's data (loaded once) and its augmentation, fitted to the training images."""
    data = ImageDataModule(recipe.data, seed=recipe.seed)
    data.setup("fit")
    pipe = build_pipeline(recipe.augment.ops, data.train.images)
    if pipe is None:
        raise UserError("augment.ops: the recipe has no augmentation ops to show, bench or ablate")
    return data, pipe


@dataclass
class Grid:
    images: Tensor  # (rows, cols, C, H, W) uint8
    columns: list[str]
    labels: list[str]  # class name per row


def grid(recipe: Recipe, data: ImageDataModule, pipe: Pipeline, rows: int = 6, draws: int = 3) -> Grid:
    """Real training images (one per class, first `rows` classes) as rows; columns: the original,
    each op alone, then `draws` draws of the whole pipeline. Seeded by the recipe."""
    labels = data.train.labels
    picks = [int(torch.nonzero(labels == c)[0]) for c in labels.unique()[:rows]]
    x = data.train.images[picks]
    H, W = x.shape[-2:]
    g = torch.Generator().manual_seed(recipe.seed)
    cols, names = [x], ["original"]
    for name, fn, kw in pipe.steps:
        cols.append(fn(x, g=g, **kw))
        names.append(name)
    for d in range(draws):
        cols.append(pipe(x, g))
        names.append(f"all #{d + 1}")
    cols = [c if c.shape[-2:] == (H, W) else _fit(c, H, W) for c in cols]
    return Grid(torch.stack(cols, 1), names, [data.train.classes[int(labels[i])] for i in picks])


def _fit(x: Tensor, H: int, W: int) -> Tensor:
    from cnnlab.data.sources import resize

    return resize(x, H) if H == W else torch.nn.functional.interpolate(x.float(), (H, W)).to(x.dtype)


def _median_rate(fn: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Images/s of `fn` (which returns how many images it processed): warm-up, then the median."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def bench(recipe: Recipe, data: ImageDataModule, pipe: Pipeline, batch_size: int = 512, batches: int = 20, workers: int = 2, repeats: int = 5) -> dict[str, Any]:
    """Augmented-batch throughput of the recipe's pipeline, side by side in one process:
    device mode (one batched call per batch, on the training device), loader mode (per-sample
    torchvision v2 in `workers` DataLoader workers), and a plain copy of the same bytes (ceiling).
    Every mode cuts the same shuffled batches from the same in-memory training images."""
    use_cuda = recipe.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    images, labels = data.train.images, data.train.labels
    n = min(batches * batch_size, len(labels) // batch_size * batch_size)
    if n == 0:
        raise UserError(f"bench: the training split has {len(labels)} images, fewer than one batch of {batch_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(recipe.seed))[:n]
    sync = torch.cuda.synchronize if use_cuda else (lambda: None)
    g = torch.Generator(device=device).manual_seed(recipe.seed)

    def device_mode() -> int:
        for idx in order.split(batch_size):
            pipe(images.index_select(0, idx).to(device, non_blocking=True), g)
        sync()
        return n

    def copy_only() -> int:
        for idx in order.split(batch_size):
            images.index_select(0, idx).to(device, non_blocking=True).clone()
        sync()
        return n

    ds = TensorImages(images[order], labels[order], per_sample_transform(pipe, tuple(images.shape[-2:])))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_batch,
                        persistent_workers=workers > 0)

    def loader_mode() -> int:
        for x, _ in loader:
            x.to(device, non_blocking=True)
        sync()
        return n

    rates = {}
    for name, fn in (("device", device_mode), ("loader", loader_mode), ("copy", copy_only)):
        rates[name], runs = _median_rate(fn, repeats if name != "loader" else max(1, repeats // 2))
        rates[f"{name}_runs"] = runs
    ops = [step[0] for step in pipe.steps]
    return {"ops": ops, "batch_size": batch_size, "images_per_repeat": n, "loader_workers": workers,
            "device": str(device), "threads": torch.get_num_threads(),
            "images_per_s": {k: rates[k] for k in ("device", "loader", "copy")},
            "runs": {k: rates[f"{k}_runs"] for k in ("device", "loader", "copy")},
            "device_over_loader": rates["device"] / rates["loader"],
            "device_over_copy": rates["device"] / rates["copy"]}


def ablation_variants(ops: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """No augmentation, each op alone, and the whole pipeline."""
    return [("none", []), *((op["name"], [op]) for op in ops), ("all", ops)]


def ablate(recipe: Recipe, out_dir: Path, seeds: int = 1, progress: bool = True) -> dict[str, Any]:
    """Ordinary cnnlab training runs per variant and seed (recipe seed, +1, ...): same data, model
    and budget; the runs are kept under `out_dir`. Test accuracy per variant as the mean over seeds,
    with its spread, and the mean gain over 'none' (paired by seed)."""
    from cnnlab.tasks import train as train_task

    if not recipe.augment.ops:
        raise UserError("augment.ops: the recipe has no augmentation ops to ablate")
    base = recipe.dump()
    seed_list = [recipe.seed + k for k in range(seeds)]
    rows = []
    for name, ops in ablation_variants(base["augment"]["ops"]):
        runs = []
        for seed in seed_list:
            raw = copy.deepcopy(base)
            raw["augment"]["ops"], raw["seed"] = ops, seed
            raw["output"].update(dir=str(out_dir), name=f"{name}-seed{seed}")
            runs.append(train_task.run(validate(raw, f"ablation variant {name}"), progress=progress))
        accs = [r["test_acc"] for r in runs]
        rows.append({"variant": name, "test_acc": statistics.mean(accs),
                     "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "test_accs": accs,
                     "wall_time_s": statistics.mean(r["wall_time_s"] for r in runs),
                     "run_dirs": [r["run_dir"] for r in runs]})
    none = rows[0]["test_accs"]
    for row in rows:
        row["gain_vs_none"] = statistics.mean(a - b for a, b in zip(row["test_accs"], none))
    return {"variants": rows, "epochs": recipe.trainer.max_epochs, "images_per_class": recipe.data.subset,
            "seeds": seed_list}


def run(recipe: Recipe, rows: int = 6, bench_batch_size: int | None = None, ablate_seeds: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """The grid (always), the throughput bench (with a batch size) and the ablation (with a number of
    seeds), written to one run folder: augment_grid.png, ablation.png, results.json (returned)."""
    from cnnlab.report import plot_ablation, plot_grid
    from cnnlab.tasks.train import require_one_process

    require_one_process(recipe, "augment")
    data, pipe = prepare(recipe)  # loads the data: a bad root fails here, before any folder exists
    g = grid(recipe, data, pipe, rows=rows)
    b = bench(recipe, data, pipe, batch_size=bench_batch_size) if bench_batch_size else None
    run_dir = runinfo.new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-augment")
    runinfo.write_recipe(run_dir, recipe.dump())
    plot_grid(g, run_dir / "augment_grid.png")
    results: dict[str, Any] = {"run_dir": str(run_dir), "grid": str(run_dir / "augment_grid.png"),
                               "grid_columns": g.columns, "grid_rows": len(g.labels)}
    if b is not None:
        results["bench"] = b
    if ablate_seeds:
        results["ablation"] = a = ablate(recipe, run_dir / "ablation", seeds=ablate_seeds, progress=progress)
        plot_ablation(a, run_dir / "ablation.png")
        results["ablation_plot"] = str(run_dir / "ablation.png")
    runinfo.write_json(run_dir / "results.json", results)
    return results
