"""`cnnlab augment`: look at the recipe's augmentation (grid), measure it (bench), and see what
each op buys in test accuracy at an equal training budget (ablate)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.bench.augment import bench
from cnnlab.data import ImageDataModule
from cnnlab.engine.assemble import require_one_process
from cnnlab.engine.sweep import drive, plan
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json, write_recipe
from cnnlab.recipe import Recipe
from cnnlab.sweep.spec import SweepSpec


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


def ablation_variants(ops: list[dict[str, Any]]) -> dict[str, list[str]]:
    """No augmentation, each op alone, and the whole pipeline, as sweep variants (overrides of
    augment.ops); an op named twice gets a number."""
    out: dict[str, list[str]] = {"none": ["augment.ops=[]"]}
    for op in ops:
        name, k = op["name"], 2
        while name in out:
            name, k = f"{op['name']} #{k}", k + 1
        out[name] = [f"augment.ops={json.dumps([op])}"]
    out["all"] = [f"augment.ops={json.dumps(ops)}"]
    return out


def ablate(recipe: Recipe, out_dir: Path, seeds: int = 1, progress: bool = True,
           on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """A sweep of ordinary training runs per variant and seed (recipe seed, +1, ...): same data,
    model and budget, run as the recipe's launcher: section says (side by side by default), kept
    under `out_dir` (resumable with `cnnlab sweep --resume`). The sweep's summary: test accuracy per
    variant as the mean over seeds with its spread, and the difference from 'none' paired by seed."""
    if not recipe.augment.ops:
        raise UserError("augment.ops: the recipe has no augmentation ops to ablate")
    r = recipe.model_copy(deep=True)
    r.sweep = SweepSpec(seeds=[recipe.seed + k for k in range(seeds)],
                        variants=ablation_variants(recipe.dump()["augment"]["ops"]))
    p = plan(r, source="augment --ablate")
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"epochs": recipe.trainer.max_epochs, "images_per_class": recipe.data.subset}
    try:
        s = drive(p, out_dir, recipe.launcher, progress, on_trial, command="cnnlab augment --ablate", plots=False)
    except Interrupted as e:
        e.partial.update(extra)
        raise
    return {**s, **extra}


def run(recipe: Recipe, rows: int = 6, bench_batch_size: int | None = None, ablate_seeds: int | None = None,
        progress: bool = True, on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The grid (always), the throughput bench (with a batch size) and the ablation (with a number of
    seeds), written to one run folder: augment_grid.png, ablation.png, results.json (returned)."""
    from cnnlab.report.augment import plot_grid

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
        from cnnlab.report.sweep import plot_sweep

        try:
            results["ablation"] = a = ablate(recipe, run_dir / "ablation", seeds=ablate_seeds, progress=progress,
                                             on_trial=on_trial)
        except Interrupted as e:
            results.update(ablation=e.partial, interrupted=e.partial["interrupted"])
            write_json(run_dir / "results.json", results)
            raise
        plot_sweep(a, run_dir / "ablation.png", title=f"augmentation ablation, {a['epochs']} epochs, equal budget")
        results["ablation_plot"] = str(run_dir / "ablation.png")
    write_json(run_dir / "results.json", results)
    return results
