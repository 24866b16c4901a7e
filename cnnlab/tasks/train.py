"""`cnnlab train`: recipe -> trained, tested run folder."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cnnlab import runinfo
from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.data import ImageDataModule
from cnnlab.errors import UserError
from cnnlab.lit import Classifier, build_trainer
from cnnlab.models import build_model
from cnnlab.recipe import Recipe


@dataclass
class Assembled:
    data: ImageDataModule
    module: Classifier
    pipeline: Pipeline | None  # the recipe's augmentation, fitted to the training images


def assemble(recipe: Recipe) -> Assembled:
    """Data (loaded, so a bad root fails here, before any folder is made) and the module."""
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    data = ImageDataModule(recipe.data, seed=recipe.seed)
    data.setup("fit")
    net = build_model(recipe.model.name, data.in_channels, data.num_classes, **recipe.model.kwargs())
    pipeline = build_pipeline(recipe.augment.ops, data.train.images)
    if pipeline is not None and recipe.augment.where == "loader":
        data.train_transform = per_sample_transform(pipeline, tuple(data.train.images.shape[-2:]))
    device_aug = pipeline if recipe.augment.where == "device" else None
    module = Classifier(net, recipe, data.num_classes, data.mean, data.std, augment=device_aug)
    return Assembled(data, module, pipeline)


def last_checkpoint(run_dir: Path) -> Path:
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise UserError(f"--resume: no checkpoints/last.ckpt in {run_dir}")
    return ckpt


def run(recipe: Recipe, resume: Path | None = None, callbacks: list[pl.Callback] = (),
        progress: bool = True) -> dict[str, Any]:
    """Train, test the best checkpoint, write the run folder; returns results.json's content."""
    a = assemble(recipe)
    earlier: list[dict[str, str]] = []
    if resume is not None:
        run_dir, ckpt_path = Path(resume), last_checkpoint(resume)
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        done = state["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]  # epochs trained
        earlier = runinfo.read_metrics(run_dir / "metrics.csv", before_epoch=done)
    else:
        run_dir, ckpt_path = runinfo.new_run_dir(recipe.output.dir, recipe.output.name or "run"), None
    runinfo.write_recipe(run_dir, recipe.dump())
    if a.pipeline is not None and a.pipeline.fitted:  # e.g. PCA lighting's eigenpairs, as evidence
        runinfo.write_json(run_dir / "augment_fit.json", {k: {n: t.tolist() for n, t in v.items()}
                                                          for k, v in a.pipeline.fitted.items()})
    has_val = len(a.data.val.labels) > 0
    speed = runinfo.Throughput()
    trainer = build_trainer(recipe, run_dir, [speed, *callbacks], has_val=has_val, progress=progress)
    t0 = time.perf_counter()
    trainer.fit(a.module, datamodule=a.data, ckpt_path=ckpt_path)
    wall = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if has_val else ""
    tested = trainer.test(a.module, datamodule=a.data, ckpt_path=best or None, verbose=False)[0]
    device = a.module.device
    results = {
        "run_dir": str(run_dir),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": dict(zip(a.data.test.classes, a.module.test_per_class_acc)),
        "best_val_acc": _float(trainer.checkpoint_callback.best_model_score),
        "checkpoint": best or str(run_dir / "checkpoints" / "last.ckpt"),
        "epochs": trainer.current_epoch,
        "wall_time_s": wall,
        "train_images_per_s": speed.images_per_s,
        "images": {"train": len(a.data.train.labels), "val": len(a.data.val.labels), "test": len(a.data.test.labels)},
        "parameters": sum(p.numel() for p in a.module.net.parameters()),
        "peak_memory": runinfo.peak_memory_mib(device),
        "device": runinfo.device_info(device),
        "versions": runinfo.versions(),
        "seed": recipe.seed,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
    }
    runinfo.prepend_metrics(run_dir / "metrics.csv", earlier)
    runinfo.write_json(run_dir / "results.json", results)
    if recipe.output.plots:
        from cnnlab.report import plot_curves

        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", recipe.optim.label_smoothing)
    return results


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, (torch.Tensor, float, int)) else None
