"""A training run from start to finish: recipe -> trained, tested run folder. `cnnlab train`, its
sweeps, the augmentation ablation and the stacking study all train through `train`; `cnnlab
finetune` shares `open_folder` and the Trainer, so both are rank-aware the same way: every process
trains, only global rank 0 writes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from cnnlab.data.module import describe, per_process_batch
from cnnlab.engine import trackers, tta
from cnnlab.engine.assemble import Assembled, assemble, chance, per_class_acc
from cnnlab.engine.callbacks import MetricsCSV, RunFolder, Throughput, launch_rank, perf
from cnnlab.engine.checkpoint import epochs_done
from cnnlab.engine.signals import StopOnSignal
from cnnlab.engine.trainer import build_trainer, evaluator
from cnnlab.env import device_info, versions
from cnnlab.errors import Diverged, Interrupted
from cnnlab.io import best_metric, epochs_logged, last_checkpoint, new_run_dir, write_json, write_recipe
from cnnlab.precision import weight_memory
from cnnlab.recipe import Recipe


def open_folder(trainer: pl.Trainer, folder: RunFolder, recipe: Recipe, name: str, fixed: Path | None = None) -> bool:
    """Global rank 0 makes the run folder and writes recipe.yaml before `fit` (RunFolder.setup then
    broadcasts the folder to every process); the other processes write nothing. Returns whether
    this process made it. A folder already set (a resumed run) is kept; `fixed` names the folder
    to make (a sweep's cell), else it is a new timestamped one under output.dir."""
    if folder.path is not None or launch_rank(trainer) != 0:
        return False
    if fixed is not None:
        fixed.mkdir(parents=True, exist_ok=True)
        folder.path = fixed
    else:
        folder.path = new_run_dir(recipe.output.dir, recipe.output.name or name)
    write_recipe(folder.path, recipe.dump())
    return True


def test_fitted(trainer: pl.Trainer, recipe: Recipe, module: pl.LightningModule, data: pl.LightningDataModule,
                folder: RunFolder, best: str, progress: bool) -> dict[str, float]:
    """The test split's numbers after `fit`, with the weights of `best` (else those in memory).
    In the processes that trained (one, or ddp's), Lightning's test loop shards the split over them.
    After ddp_spawn this is the launching process, which holds the data and the checkpoint: it tests
    here on one device (the workers would all start again just to test), and metrics.csv gets the
    test row the workers would have logged. Either way every test image is counted once."""
    if recipe.trainer.strategy != "ddp_spawn" or trainer.world_size == 1:
        return trainer.test(module, datamodule=data, ckpt_path=best or None, verbose=False)[0]
    ckpt = Path(best) if best else folder.path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if best:
        module.load_state_dict(state["state_dict"])
    tested = evaluator(recipe.trainer.accelerator, recipe.trainer.precision, progress).test(
        module, datamodule=data, verbose=False)[0]
    data.trainer = None  # no longer the evaluator's: loaders of the whole split again
    if launch_rank(trainer) == 0:
        csv = MetricsCSV()
        csv.start(folder.path / "metrics.csv")
        row = {**tested, "epoch": epochs_done(ckpt)}
        for logger in [csv, *trainer.loggers[1:]]:  # the trackers too: they saw the fit in the workers
            logger.log_metrics(row, step=state["global_step"])
    return tested


def _tta(recipe: Recipe, a: Assembled, ckpt: Path, run_dir: Path, progress: bool) -> dict[str, Any]:
    """eval.tta on global rank 0, in this process on one device, with the weights of the tested
    checkpoint read from its file (after ddp_spawn this process's module holds other weights);
    tta.json and tta.png go into the run folder."""
    a.module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    a.data.trainer = None  # batches of the whole test split, not this rank's shard of it
    results = tta.measure(recipe, a.module, a.data.test_dataloader(), recipe.eval.tta, recipe.trainer.accelerator,
                          recipe.trainer.precision, progress)
    return tta.write(results, run_dir)


def train(recipe: Recipe, resume: Path | None = None, callbacks: list[pl.Callback] = (),
          progress: bool = True, resume_overrides: list[str] = (),
          on_data: Callable[[dict[str, Any]], None] | None = None, run_dir: Path | None = None,
          tracking: trackers.Group | None = None, cell: str | None = None) -> dict[str, Any] | None:
    """Train, test the best checkpoint, write the run folder; returns results.json's content on
    global rank 0 (None on the other processes of a data-parallel run, which write nothing).
    `on_data` gets the data report as soon as the data is loaded (on global rank 0). `run_dir`: a
    folder named by the caller (a sweep's cell), made here with its recipe.yaml, instead of a new
    timestamped one under output.dir. The recipe's trackers (output.loggers) log the run too; in a
    sweep's `tracking` group, as the cell named `cell`."""
    loggers = trackers.build(recipe, tracking, cell)  # a missing tracker package fails before any work
    a = assemble(recipe)
    if recipe.eval.tta:  # views that do not fit the images: an error before any folder is made
        tta.checked(recipe, recipe.eval.tta, a.data.test.take(torch.arange(min(1, len(a.data.test.labels)))).images)
    has_val = len(a.data.val.labels) > 0
    ckpt_path = last_checkpoint(resume) if resume is not None else None
    folder = RunFolder(resume, keep_epochs_before=epochs_done(ckpt_path) if ckpt_path else None)
    stop = StopOnSignal()
    trainer = build_trainer(recipe.trainer, folder, [Throughput(), stop, *callbacks], has_val=has_val,
                            progress=progress, loggers=loggers)
    try:
        return _train(recipe, a, trainer, folder, stop, has_val, ckpt_path, progress, resume_overrides, on_data, run_dir)
    finally:
        stop.restore()


def _train(recipe: Recipe, a: Assembled, trainer: pl.Trainer, folder: RunFolder, stop: StopOnSignal, has_val: bool,
           ckpt_path: Path | None, progress: bool, resume_overrides: list[str],
           on_data: Callable[[dict[str, Any]], None] | None, run_dir: Path | None) -> dict[str, Any] | None:
    per_process_batch(recipe.data.batch_size, trainer.world_size)  # before any folder is made
    data_report = describe(a.data)
    if on_data is not None and launch_rank(trainer) == 0:
        on_data(data_report)
    if open_folder(trainer, folder, recipe, "run", Path(run_dir) if run_dir is not None else None) and a.pipeline is not None and a.pipeline.fitted:
        # e.g. PCA lighting's eigenpairs, as evidence (a resumed run keeps the files it started with)
        write_json(folder.path / "augment_fit.json", {k: {n: t.tolist() for n, t in v.items()}
                                                      for k, v in a.pipeline.fitted.items()})
    if launch_rank(trainer) == 0:  # the folder exists here now (a resumed run's, too)
        trackers.start(trainer.loggers, folder.path, recipe)
    t0 = time.perf_counter()
    try:
        trainer.fit(a.module, datamodule=a.data, ckpt_path=ckpt_path)
    except Interrupted as e:
        e.resume = f"cnnlab train --resume {folder.path}"
        if trainer.is_global_zero:  # what was kept, and how to go on
            write_json(folder.path / "results.json", {
                "run_dir": str(folder.path), "interrupted": e.record(), "resume": e.resume,
                "epochs": epochs_logged(folder.path / "metrics.csv"), "seed": recipe.seed, "versions": versions(),
                "resumed_from": str(ckpt_path) if ckpt_path else None})
            trackers.finish(trainer.loggers, folder.path, "KILLED", e.checkpoint)
        raise
    except Diverged as e:
        if trainer.is_global_zero:
            trackers.finish(trainer.loggers, folder.path, "FAILED", e.checkpoint)
        raise
    wall = time.perf_counter() - t0
    fitted = perf(trainer)
    best = trainer.checkpoint_callback.best_model_path if has_val else ""
    tested = test_fitted(trainer, recipe, a.module, a.data, folder, best, progress)
    if not trainer.is_global_zero:
        return None
    run_dir = folder.path
    metrics = run_dir / "metrics.csv"
    weights = weight_memory(a.module)
    results = {
        "run_dir": str(run_dir),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": per_class_acc(tested, a.data.test.classes),
        "chance": chance(tested["test/acc"], a.data.num_classes, len(a.data.test.labels)),
        "best_val_acc": best_metric(metrics, "val/acc"),
        "checkpoint": best or str(run_dir / "checkpoints" / "last.ckpt"),
        "epochs": epochs_logged(metrics),
        "wall_time_s": wall,
        **fitted,
        "global_batch": recipe.data.batch_size,
        "images": {"train": len(a.data.train.labels), "val": len(a.data.val.labels), "test": len(a.data.test.labels)},
        "skipped_images": a.data.skipped,
        "data": data_report,
        "placement": a.data.placement,
        "parameters": weights["parameters"],
        "weights": weights,
        "device": device_info(trainer),
        "threads": torch.get_num_threads(),  # intra-op threads: CPU reductions may differ in the last bits across counts
        "precision": recipe.trainer.precision,
        "conv_impl": a.conv,
        "versions": versions(),
        "seed": recipe.seed,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "resume_overrides": list(resume_overrides) if ckpt_path else None,
    }
    if recipe.eval.tta:
        results["tta"] = _tta(recipe, a, Path(results["checkpoint"]), run_dir, progress)
    write_json(run_dir / "results.json", results)
    if recipe.output.plots:
        from cnnlab.report.train import plot_curves

        plot_curves(metrics, run_dir / "curves.png", recipe.optim.label_smoothing)
    late = stop.after_training(trainer.global_step, results["checkpoint"])
    trackers.finish(trainer.loggers, run_dir, "FINISHED" if late is None else "KILLED", results["checkpoint"])
    if late is not None:
        raise late
    return results
