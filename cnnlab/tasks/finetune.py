"""`cnnlab finetune`: recipe(s) -> one regime trained and tested, or a sweep of every regime at every
data size (the lecture's similar/different x little/lots table), written to a run folder."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from cnnlab.data.module import describe
from cnnlab.engine.assemble import processes, require_one_process
from cnnlab.engine.callbacks import RunFolder
from cnnlab.engine.checkpoint import check_resume_overrides
from cnnlab.engine.finetune import Source, fit_regime, load_data, load_source, on_features, resolve
from cnnlab.env import versions
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json, write_recipe
from cnnlab.recipe import Recipe
from cnnlab.sweep import summarise
from cnnlab.transfer import REGIMES


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def _meta(recipe: Recipe, source: Source) -> dict[str, Any]:
    return {"backbone": source.spec.backbone, "weights": source.backbone.identity, "backbone_source": source.backbone.source,
            "data": recipe.data.source, "classes": recipe.data.classes, "image_size": recipe.data.image_size,
            "declared_similar": source.spec.similar, "stage_channels": source.backbone.channels}


def check_processes(recipe: Recipe, source: Source, regime: str) -> None:
    """Several processes (ddp, ddp_spawn) train a regime through the backbone, each on its shard of
    every global batch. A head on stored features stays in one process: its solve (or a few seconds
    of SGD on the stored features) is one convex problem, and `auto` measures similarity with such
    probes before it picks."""
    if not processes(recipe):
        return
    t = recipe.trainer
    where = f"trainer: devices {t.devices}, strategy {t.strategy}, num_nodes {t.num_nodes}"
    if regime == "auto":
        raise UserError(f"finetune.regime: auto runs in one process (its similarity probes are convex solves); "
                        f"name a regime for {where}")
    plan = REGIMES.get(regime)(len(source.backbone.stages), recipe.finetune)
    if on_features(recipe, plan):
        raise UserError(f"finetune.regime: {regime} trains a head on stored frozen features, one convex problem "
                        f"solved in one process; for {where} set finetune.probe: sgd and finetune.cache_dir: null "
                        "(the head then trains on images through the frozen backbone), or choose top, full, lp-ft "
                        "or scratch")


def resumed_regime(run_dir: Path) -> str | None:
    """The regime a stopped finetune run was training (`auto` already resolved), from the record its
    stop left in results.json; None when the folder has no such record."""
    try:
        record = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    regime = record.get("regime") if isinstance(record, dict) else None
    return regime if isinstance(regime, str) and regime in REGIMES.names() else None


def run(recipe: Recipe, regime: str | None = None, progress: bool = True,
        on_data: Callable[[dict[str, Any]], None] | None = None, resume: Path | None = None,
        resume_overrides: list[str] = ()) -> dict[str, Any] | None:
    """Fine-tune with one regime (the recipe's, or `regime`); writes the run folder, returns results
    on global rank 0 (None on the other processes of a data-parallel run, which write nothing).
    With `resume` (a run folder, `recipe` its recipe.yaml), the stopped fit continues from its
    last checkpoint with the regime it was training. `on_data` gets the data report once the data
    is loaded and checked (on global rank 0)."""
    if resume is not None:
        check_resume_overrides(list(resume_overrides))
        regime = resumed_regime(resume) or regime
    source = load_source(recipe)
    asked = regime or source.spec.regime
    if resume is not None and asked == "auto":
        raise UserError(f"--resume: {resume}/results.json does not say which regime auto chose; start a new run")
    check_processes(recipe, source, asked)
    data = load_data(recipe, source)
    chosen, why, sim = resolve(asked, recipe, source, data)
    if resume is not None:
        why = f"continued from {resume}'s last checkpoint, the regime it was training"
    data_report = describe(data)
    folder = RunFolder()
    t0 = time.perf_counter()
    r = fit_regime(recipe, source, data, chosen, folder, progress,
                   on_start=(lambda: on_data(data_report)) if on_data is not None else None, resume=resume)
    if r is None:
        return None
    results = {"run_dir": str(folder.path), **_meta(recipe, source), "asked": asked,
               "why": why, "similar": sim.similar if sim else source.spec.similar,
               "similarity": asdict(sim) if sim else None, **_public(r), "wall_time_s": time.perf_counter() - t0,
               "skipped_images": data.skipped, "data": data_report, "versions": versions(), "seed": recipe.seed}
    write_json(folder.path / "results.json", results)
    return results


def sweep(recipes: list[tuple[str, Recipe]], progress: bool = True) -> dict[str, Any]:
    """Every regime of `finetune.sweep.regimes` at every size of `finetune.sweep.sizes`, for each recipe
    (one per row of the lecture's table); writes regimes.json, results.json and regimes.png."""
    for _, r in recipes:
        require_one_process(r, "finetune --sweep", "A sweep trains one process per cell")
    sources = [(name, r, load_source(r)) for name, r in recipes]  # all weights checked before any work
    for name, r, src in sources:
        if src.spec.similar is None and src.spec.sweep.sizes[0] == 1:
            raise UserError(f"finetune.sweep.sizes ({name}): auto's similarity probes need at least 2 images per class, "
                            "got size 1; set finetune.similar: true or false")
    first = recipes[0][1]
    run_dir = new_run_dir(first.output.dir, first.output.name if len(recipes) == 1 else "transfer-grid")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        with interruptible("fine-tuning the sweep"):
            cells, device = _sweep_cells(sources, run_dir, len(recipes), rows, progress)
    except Interrupted as e:  # regimes.json holds every finished fit: marked
        write_json(run_dir / "regimes.json", {"runs": rows, "interrupted": e.record()})
        raise e.kept(f"{len(rows)} finished fits kept in {run_dir / 'regimes.json'} (marked interrupted)")
    wall = time.perf_counter() - t0
    results = {"run_dir": str(run_dir), "recipes": {n: _meta(r, src) for n, r, src in sources}, "grid": cells,
               "wall_time_s": wall, "device": device,
               "versions": versions(), "seed": first.seed}
    results["rows"] = summary_rows(rows, first.seed)
    write_json(run_dir / "regimes.json", {"runs": rows})
    write_json(run_dir / "results.json", results)
    if first.output.plots:
        from cnnlab.report.finetune import plot_regimes

        plot_regimes(rows, run_dir / "regimes.png")
    results["runs"] = rows
    return results


def summary_rows(fits: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The sweeps' one summary (cnnlab.sweep.summarise) of every fit, one group per (recipe, size)
    whose baseline is its first regime: the differences compare regimes on the same data."""
    out: list[dict[str, Any]] = []
    for name, size in dict.fromkeys((x["recipe"], x["size"]) for x in fits):
        group = [{"cell": f"{name}, {size}/class: {x['regime']}", "seed": seed, "status": "done", "test_acc": x["test_acc"],
                  "test_loss": x["test_loss"], "train_images_per_s": x.get("train_images_per_s"),
                  "wall_time_s": x["features_s"] + x["fit_s"]} for x in fits if (x["recipe"], x["size"]) == (name, size)]
        out += summarise(group)
    return out


def _sweep_cells(sources: list[tuple[str, Recipe, Source]], run_dir: Path, n_recipes: int, rows: list[dict[str, Any]],
                 progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every (recipe, size, regime) fit of the sweep; each finished fit is appended to `rows` (and
    regimes.json) as it ends. Returns the table's cells and the device."""
    cells, device = [], None
    for name, recipe, source in sources:
        sub = run_dir / name if n_recipes > 1 else run_dir
        sub.mkdir(exist_ok=True)
        write_recipe(sub, recipe.dump())
        s = source.spec.sweep
        for size, epochs in zip(s.sizes, s.max_epochs):
            r = recipe.model_copy(deep=True)
            r.data.subset, r.trainer.max_epochs = (None if size == "all" else size), epochs
            data = load_data(r, source)
            auto, why, sim = resolve("auto", r, source, data)
            got = []
            for regime in s.regimes:
                out = _public(fit_regime(r, source, data, regime, sub / f"{size}-per-class" / regime, progress))
                device = out["device"]
                got.append({"recipe": name, "similar": sim.similar, "size": size, **out})
                rows.append(got[-1])
                write_json(run_dir / "regimes.json", {"runs": rows})  # partial results survive a crash
            best = max(got, key=lambda g: g["test_acc"])
            acc = {g["regime"]: g["test_acc"] for g in got}
            cells.append({"recipe": name, "similar": sim.similar, "probes": sim.probes, "size": size,
                          "best": best["regime"], "best_acc": best["test_acc"], "auto": auto, "why": why,
                          "auto_acc": acc.get(auto), "scratch_acc": acc.get("scratch"), "skipped_images": data.skipped})
    return cells, device
