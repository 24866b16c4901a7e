"""`cnnlab train`: recipe -> trained, tested run folder."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from cnnlab import runinfo
from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.conv.module import summary, swap
from cnnlab.data import ImageDataModule
from cnnlab.errors import UserError
from cnnlab.data.module import describe, per_process_batch
from cnnlab.lit import PER_CLASS, Classifier, build_trainer
from cnnlab.models import build_model
from cnnlab.precision import weight_memory
from cnnlab.recipe import Recipe


@dataclass
class Assembled:
    data: ImageDataModule
    module: Classifier
    pipeline: Pipeline | None  # the recipe's augmentation, fitted to the training images
    conv: dict[str, Any] | None = None  # model.conv_impl: which layers run it (None: all direct)


def module_args(recipe: Recipe, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a Classifier takes from a recipe; the checkpoint keeps the recipe (and `hparams`)."""
    return {"optim": recipe.optim, "schedule": recipe.schedule, "seed": recipe.seed,
            "channels_last": recipe.trainer.channels_last, "hparams": {"recipe": recipe.dump(), **(hparams or {})}}


def assemble(recipe: Recipe) -> Assembled:
    """Data (loaded, so a bad root fails here, before any folder is made) and the module."""
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    data = ImageDataModule(recipe.data, seed=recipe.seed)
    data.setup("fit")
    net = build_model(recipe.model.name, data.in_channels, data.num_classes, **recipe.model.kwargs())
    impl = recipe.model.conv_impl
    conv = None if impl == "direct" else summary(impl, swap(net, impl))
    # fitted to the training images; without ops a packed split is never gathered whole
    pipeline = build_pipeline(recipe.augment.ops, data.train.images) if recipe.augment.ops else None
    if pipeline is not None and recipe.augment.where == "loader":
        data.train_transform = per_sample_transform(pipeline, tuple(data.train.shape[-2:]))
    device_aug = pipeline if recipe.augment.where == "device" else None
    module = Classifier(net, data.num_classes, data.mean, data.std, augment=device_aug, **module_args(recipe))
    return Assembled(data, module, pipeline, conv)


def require_one_process(recipe: Recipe, command: str) -> None:
    """Commands that make several runs (sweeps, ablations) run in one process; data-parallel runs
    are `cnnlab train`'s (each of their processes would make its own folders)."""
    t = recipe.trainer
    if t.strategy != "auto" or t.num_nodes > 1 or (isinstance(t.devices, int) and t.devices > 1):
        raise UserError(f"trainer: `cnnlab {command}` runs in one process (devices 1 or auto, strategy auto, num_nodes 1); "
                        f"got devices {t.devices}, strategy {t.strategy}, num_nodes {t.num_nodes}. "
                        "Data-parallel training is `cnnlab train`'s")


def last_checkpoint(run_dir: Path) -> Path:
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise UserError(f"--resume: no checkpoints/last.ckpt in {run_dir}")
    return ckpt


# A resumed run continues the recorded one: these keys only say where it runs, not what it computes.
RESUME_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.strategy", "data.num_workers")


def check_resume_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUME_KEYS]
    if bad:
        raise UserError(f"--resume continues the run as recorded in its recipe.yaml; --set {bad[0]} would change it "
                        f"(max_epochs, for one, reshapes the learning-rate schedule): start a new run instead. "
                        f"On resume --set takes only {', '.join(RESUME_KEYS)}")


def epochs_done(ckpt_path: Path) -> int:
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return state["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]


def per_class_acc(tested: dict[str, float], classes: list[str]) -> dict[str, float]:
    """Per-class test accuracy from trainer.test's results (see Classifier.on_test_epoch_end)."""
    return {name: float(tested[f"{PER_CLASS}{i}"]) for i, name in enumerate(classes)}


def _tta(recipe: Recipe, a: Assembled, ckpt: Path, run_dir: Path, progress: bool) -> dict[str, Any]:
    """eval.tta on global rank 0, in this process on one device, with the weights of the tested
    checkpoint read from its file (after ddp_spawn this process's module holds other weights);
    tta.json and tta.png go into the run folder."""
    from cnnlab.tasks.eval_tta import measure, write

    a.module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    a.data.trainer = None  # batches of the whole test split, not this rank's shard of it
    tta = measure(recipe, a.module, a.data.test_dataloader(), recipe.eval.tta, recipe.trainer.accelerator,
                  recipe.trainer.precision, progress)
    return write(tta, run_dir)


def run(recipe: Recipe, resume: Path | None = None, callbacks: list[pl.Callback] = (),
        progress: bool = True, resume_overrides: list[str] = (),
        on_data: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Train, test the best checkpoint, write the run folder; returns results.json's content on
    global rank 0 (None on the other processes of a data-parallel run, which write nothing).
    `on_data` gets the data report as soon as the data is loaded (on global rank 0)."""
    a = assemble(recipe)
    if recipe.eval.tta:  # views that do not fit the images: an error before any folder is made
        from cnnlab.tasks.eval_tta import checked

        checked(recipe, recipe.eval.tta, a.data.test.take(torch.arange(min(1, len(a.data.test.labels)))).images)
    has_val = len(a.data.val.labels) > 0
    ckpt_path = last_checkpoint(resume) if resume is not None else None
    folder = runinfo.RunFolder(resume, keep_epochs_before=epochs_done(ckpt_path) if ckpt_path else None)
    trainer = build_trainer(recipe, folder, [runinfo.Throughput(), *callbacks], has_val=has_val, progress=progress)
    per_process_batch(recipe.data.batch_size, trainer.world_size)  # before any folder is made
    data_report = describe(a.data)
    if on_data is not None and runinfo.launch_rank(trainer) == 0:
        on_data(data_report)
    if resume is None and runinfo.launch_rank(trainer) == 0:
        folder.path = runinfo.new_run_dir(recipe.output.dir, recipe.output.name or "run")
        runinfo.write_recipe(folder.path, recipe.dump())  # a resumed run keeps the one it started with
        if a.pipeline is not None and a.pipeline.fitted:  # e.g. PCA lighting's eigenpairs, as evidence
            runinfo.write_json(folder.path / "augment_fit.json", {k: {n: t.tolist() for n, t in v.items()}
                                                                  for k, v in a.pipeline.fitted.items()})
    t0 = time.perf_counter()
    trainer.fit(a.module, datamodule=a.data, ckpt_path=ckpt_path)
    wall = time.perf_counter() - t0
    fitted = runinfo.perf(trainer)
    best = trainer.checkpoint_callback.best_model_path if has_val else ""
    tested = trainer.test(a.module, datamodule=a.data, ckpt_path=best or None, verbose=False)[0]
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
        "best_val_acc": runinfo.best_metric(metrics, "val/acc"),
        "checkpoint": best or str(run_dir / "checkpoints" / "last.ckpt"),
        "epochs": runinfo.epochs_logged(metrics),
        "wall_time_s": wall,
        **fitted,
        "global_batch": recipe.data.batch_size,
        "images": {"train": len(a.data.train.labels), "val": len(a.data.val.labels), "test": len(a.data.test.labels)},
        "skipped_images": a.data.skipped,
        "data": data_report,
        "placement": a.data.placement,
        "parameters": weights["parameters"],
        "weights": weights,
        "device": runinfo.device_info(trainer),
        "precision": recipe.trainer.precision,
        "conv_impl": a.conv,
        "versions": runinfo.versions(),
        "seed": recipe.seed,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "resume_overrides": list(resume_overrides) if ckpt_path else None,
    }
    if recipe.eval.tta:
        results["tta"] = _tta(recipe, a, Path(results["checkpoint"]), run_dir, progress)
    runinfo.write_json(run_dir / "results.json", results)
    if recipe.output.plots:
        from cnnlab.report import plot_curves

        plot_curves(metrics, run_dir / "curves.png", recipe.optim.label_smoothing)
    return results
