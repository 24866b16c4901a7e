"""`cnnlab augment`: look at the recipe's augmentation (grid), measure it (bench), and see what
each op buys in test accuracy at an equal training budget (ablate)."""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.bench.augment import bench
from cnnlab.data import ImageDataModule
from cnnlab.engine.assemble import require_one_process
from cnnlab.engine.run import train
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json, write_recipe
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


def ablation_variants(ops: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """No augmentation, each op alone, and the whole pipeline."""
    return [("none", []), *((op["name"], [op]) for op in ops), ("all", ops)]


def ablate(recipe: Recipe, out_dir: Path, seeds: int = 1, progress: bool = True) -> dict[str, Any]:
    """Ordinary cnnlab training runs per variant and seed (recipe seed, +1, ...): same data, model
    and budget; the runs are kept under `out_dir`. Test accuracy per variant as the mean over seeds,
    with its spread, and the mean gain over 'none' (paired by seed)."""
    if not recipe.augment.ops:
        raise UserError("augment.ops: the recipe has no augmentation ops to ablate")
    base = recipe.dump()
    seed_list = [recipe.seed + k for k in range(seeds)]
    runs: dict[str, list[dict[str, Any]]] = {}
    variants = ablation_variants(base["augment"]["ops"])
    try:
        for name, ops in variants:
            for seed in seed_list:
                raw = copy.deepcopy(base)
                raw["augment"]["ops"], raw["seed"] = ops, seed
                raw["output"].update(dir=str(out_dir), name=f"{name}-seed{seed}")
                r = validate(raw, f"ablation variant {name}")
                runs.setdefault(name, []).append(train(r, progress=progress))
    except Interrupted as e:  # the runs finished so far make the table
        e.partial = {"variants": summarise_ablation({k: v for k, v in runs.items() if v}),
                     "epochs": recipe.trainer.max_epochs, "images_per_class": recipe.data.subset, "seeds": seed_list,
                     "interrupted": {**e.record(), "runs_done": sum(map(len, runs.values())),
                                     "runs_planned": len(variants) * len(seed_list)}}
        raise
    return {"variants": summarise_ablation(runs), "epochs": recipe.trainer.max_epochs,
            "images_per_class": recipe.data.subset, "seeds": seed_list}


def summarise_ablation(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant (the first is 'none'), from its runs' results in seed order: test accuracy
    as the mean over seeds with its sample sd, the mean wall time, and the gain over 'none' paired by
    seed (the same seed shares initial weights and batch order)."""
    rows = []
    for name, rs in runs.items():
        accs = [r["test_acc"] for r in rs]
        rows.append({"variant": name, "test_acc": statistics.mean(accs),
                     "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "test_accs": accs,
                     "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs), "run_dirs": [r["run_dir"] for r in rs]})
    if not rows:  # stopped before the first run finished
        return rows
    none = rows[0]["test_accs"]
    for row in rows:
        row["gain_vs_none"] = statistics.mean(a - b for a, b in zip(row["test_accs"], none))
    return rows


def run(recipe: Recipe, rows: int = 6, bench_batch_size: int | None = None, ablate_seeds: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """The grid (always), the throughput bench (with a batch size) and the ablation (with a number of
    seeds), written to one run folder: augment_grid.png, ablation.png, results.json (returned)."""
    from cnnlab.report.augment import plot_ablation, plot_grid

    require_one_process(recipe, "augment")
    data, pipe = prepare(recipe)  # loads the data: a bad root fails here, before any folder exists
    g = grid(recipe, data, pipe, rows=rows)
    b = bench(recipe, data, pipe, batch_size=bench_batch_size) if bench_batch_size else None
    run_dir = new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-augment")
    write_recipe(run_dir, recipe.dump())
    plot_grid(g, run_dir / "augment_grid.png")
    results: dict[str, Any] = {"run_dir": str(run_dir), "grid": str(run_dir / "augment_grid.png"),
                               "grid_columns": g.columns, "grid_rows": len(g.labels)}
    if b is not None:
        results["bench"] = b
    if ablate_seeds:
        try:
            with interruptible("ablating"):
                results["ablation"] = a = ablate(recipe, run_dir / "ablation", seeds=ablate_seeds, progress=progress)
        except Interrupted as e:
            results.update(ablation=e.partial, interrupted=e.partial["interrupted"])
            write_json(run_dir / "results.json", results)
            i = e.partial["interrupted"]
            raise e.kept(f"{i['runs_done']} of {i['runs_planned']} ablation runs finished and kept; the partial "
                         f"table is in {run_dir / 'results.json'} (marked interrupted)")
        plot_ablation(a, run_dir / "ablation.png")
        results["ablation_plot"] = str(run_dir / "ablation.png")
    write_json(run_dir / "results.json", results)
    return results
