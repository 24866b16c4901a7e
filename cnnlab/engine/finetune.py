"""Transfer learning through the engine: a recipe's backbone and data loaded and checked, `auto`
resolved into a regime, frozen features through the feature cache, and one regime fitted and tested
with the engine's Trainer (rank-aware: every process trains, global rank 0 writes)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from cnnlab.data import ImageDataModule, Split
from cnnlab.data.module import per_class
from cnnlab.engine import trackers
from cnnlab.engine.assemble import augmentation, chance, module_args, per_class_acc
from cnnlab.engine.callbacks import RunFolder, Throughput, launch_rank, perf
from cnnlab.engine.checkpoint import epochs_done, finetune_network
from cnnlab.engine.module import Classifier
from cnnlab.engine.run import open_folder, test_fitted
from cnnlab.engine.signals import StopOnSignal
from cnnlab.engine.trainer import build_trainer, evaluator
from cnnlab.env import device_info
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import best_metric, epochs_logged, last_checkpoint, write_json
from cnnlab.recipe import Recipe
from cnnlab.transfer import BACKBONES, REGIMES, Backbone, Plan, TransferNet, choose_regime
from cnnlab.transfer.features import cache_key, cached_features, compute_identity, extract, tap_slices
from cnnlab.transfer.probe import Probe, fit_cv
from cnnlab.transfer.regimes import stage_taps, zero_head
from cnnlab.transfer.similarity import Similarity, judge, stage_probes
from cnnlab.transfer.spec import FinetuneSpec


class FreezeSchedule(pl.Callback):
    """Holds `plan.warm` frozen for the first `freeze_epochs` epochs (head warm-up), then trains them.
    The optimizer already holds their parameters (they were trainable when it was built); frozen,
    they get no gradient, so SGD/AdamW skip them: no update, no weight decay, no momentum."""

    def __init__(self, plan: Plan, freeze_epochs: int):
        self.plan, self.freeze_epochs = plan, freeze_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        warm = self.plan.warm if trainer.current_epoch < self.freeze_epochs else frozenset()
        module.net.set_frozen(self.plan.frozen | warm)


@dataclass
class Source:
    """A recipe's backbone, loaded once to fail fast; `make(pretrained)` gives a fresh copy per fit."""

    spec: FinetuneSpec
    backbone: Backbone
    make: Callable[[bool], Backbone]


def load_source(recipe: Recipe) -> Source:
    """Check the finetune section's files and their fit to the data before any training."""
    spec = recipe.finetune
    if spec is None:
        raise UserError("the recipe has no finetune: section (see recipes/transfer_similar.yaml)")
    make = partial(BACKBONES.get(spec.backbone), spec.weights)
    backbone = make(True)
    stage_taps(spec.stages, len(backbone.stages), f"backbone {spec.backbone}")  # fails here, before any data or training
    return Source(spec, backbone, make)


def load_data(recipe: Recipe, source: Source) -> ImageDataModule:
    data = ImageDataModule(recipe.data, seed=recipe.seed)
    data.setup("fit")
    if data.in_channels not in (1, source.backbone.in_channels):
        raise UserError(f"finetune.backbone: {source.spec.backbone} takes {source.backbone.in_channels}-channel "
                        f"images, the data has {data.in_channels}")
    return data


def measure_similarity(recipe: Recipe, source: Source, data: ImageDataModule) -> Similarity:
    """`finetune.similar` when declared; else linear probes on each stage's features of at most
    `probe_per_class` training images per class (one frozen-backbone pass over them)."""
    spec = recipe.finetune
    if spec.similar is not None:
        return Similarity(spec.similar, (), 0, f"declared {'similar' if spec.similar else 'different'} (finetune.similar)")
    idx = per_class(data.train.labels, spec.probe_per_class, torch.Generator().manual_seed(recipe.seed))
    sample = Split(data.train.images[idx], data.train.labels[idx], data.train.classes)
    fewest = int(torch.bincount(sample.labels, minlength=data.num_classes).min())
    if fewest < 2:
        raise UserError(f"finetune.similar: auto measures similarity with cross-validated probes, which need at least "
                        f"2 training images per class (the data has {fewest}); set finetune.similar: true or false")
    feats = extract(source.backbone, {"train": sample}, recipe.data.batch_size, evaluator(recipe.trainer.accelerator, progress=False))["train"]
    probes = stage_probes(feats, sample.labels, source.backbone.channels, recipe.seed)
    return judge(probes, spec.similar_tolerance, len(sample.labels))


def resolve(regime: str, recipe: Recipe, source: Source, data: ImageDataModule) -> tuple[str, str, Similarity | None]:
    """(regime, why, similarity): `auto` becomes a regime by the lecture's rules, the others stay as named."""
    if regime != "auto":
        return regime, "named in the recipe", None
    sim = measure_similarity(recipe, source, data)
    per_class_n = len(data.train.labels) // data.num_classes
    chosen, why = choose_regime(sim.similar, per_class_n, recipe.finetune.lots_from)
    return chosen, f"{why}; {sim.why}", sim


def _features_data(recipe: Recipe, data: ImageDataModule, feats: dict[str, torch.Tensor], cols: torch.Tensor) -> ImageDataModule:
    def split(name: str) -> Split:
        s = getattr(data, name)
        return Split(feats[name][:, cols, None, None].contiguous(), s.labels, s.classes)  # (N, D, 1, 1)

    return ImageDataModule.from_splits(recipe.data, recipe.seed, split("train"), split("val"), split("test"))


def frozen_features(recipe: Recipe, source: Source, data: ImageDataModule, progress: bool = False,
                    write: bool = True) -> tuple[dict[str, torch.Tensor], bool]:
    """The pretrained backbone's pooled taps of every split, through the feature cache (written
    only when `write`: by global rank 0)."""
    bb, splits = source.backbone, {"train": data.train, "val": data.val, "test": data.test}
    key = cache_key(bb, recipe.data, recipe.seed, data.image_size, splits, compute_identity(recipe.trainer.accelerator))
    return cached_features(bb, splits, key, recipe.finetune.cache_dir, recipe.data.batch_size,
                           evaluator(recipe.trainer.accelerator, progress=progress), write)


def _probe(recipe: Recipe, feats: dict[str, torch.Tensor], cols: torch.Tensor, data: ImageDataModule, head: nn.Linear) -> Probe:
    """The exact linear probe of the training split's features, written into `head`."""
    spec = recipe.finetune
    probe = fit_cv(feats["train"][:, cols], data.train.labels, data.num_classes, tuple(spec.probe_C), spec.probe_folds,
                   recipe.seed)
    with torch.no_grad():
        head.weight.copy_(probe.fit.weight)
        head.bias.copy_(probe.fit.bias)
    return probe


def _accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float | None:
    with torch.no_grad():
        return float((head(x.to(head.weight.dtype)).argmax(1) == y).float().mean()) if len(y) else None


def on_features(recipe: Recipe, plan: Plan) -> bool:
    """Whether the head trains on stored frozen features instead of images through the backbone:
    every stage it reads is frozen, nothing augments the images, and the features are cached
    (finetune.cache_dir) or the head is solved exactly (probe: solver)."""
    spec = recipe.finetune
    return plan.cached and not recipe.augment.ops and (spec.cache_dir is not None or spec.probe == "solver")


def fit_regime(recipe: Recipe, source: Source, data: ImageDataModule, regime: str, folder: RunFolder | Path,
               progress: bool = True, callbacks: list[pl.Callback] = (),
               on_start: Callable[[], None] | None = None, resume: Path | None = None) -> dict[str, Any] | None:
    """Train one regime and test it; returns its results (also the module, under '_module') on
    global rank 0, None on the other processes of a data-parallel run. `folder` is the run folder,
    or a RunFolder that global rank 0 makes (then `on_start` runs there first); with `resume`, the
    run folder whose checkpoints/last.ckpt the fit continues from (mid-epoch included).
    `recipe.finetune` decides the regime's parameters; `source` only supplies the backbone."""
    spec = recipe.finetune
    plan: Plan = REGIMES.get(regime)(len(source.backbone.stages), spec)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    k = data.num_classes
    # the head reads frozen features only: compute them once (stored when cache_dir is set), and solve
    # the head exactly (probe: solver) or train it on them (probe: sgd); augmentation needs the images
    use_cache = on_features(recipe, plan)
    solver = use_cache and spec.probe == "solver"  # the head is solved, not trained
    has_val = len(data.val.labels) > 0
    ckpt_path = last_checkpoint(resume) if resume is not None else None
    if ckpt_path is not None:
        if solver:
            raise UserError(f"--resume: regime {regime} solves its head exactly (finetune.probe: solver); "
                            "there is no training to continue, start a new run")
        folder = folder if isinstance(folder, RunFolder) else RunFolder()
        folder.path, folder.keep_epochs_before = Path(resume), epochs_done(ckpt_path)
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    schedule = [] if use_cache else [FreezeSchedule(plan, spec.freeze_epochs)]
    stop = StopOnSignal()
    trainer = build_trainer(recipe.trainer, folder, [*schedule, Throughput(), stop, *callbacks], has_val=has_val,
                            progress=progress, loggers=trackers.build(recipe))
    try:
        return _fit_regime(recipe, source, data, regime, plan, folder, trainer, has_val, use_cache, solver,
                           on_start, progress, ckpt_path)
    finally:
        stop.restore()


def _fit_regime(recipe: Recipe, source: Source, data: ImageDataModule, regime: str, plan: Plan, folder: RunFolder,
                trainer: pl.Trainer, has_val: bool, use_cache: bool, solver: bool,
                on_start: Callable[[], None] | None, progress: bool, ckpt_path: Path | None) -> dict[str, Any] | None:
    spec, k = recipe.finetune, data.num_classes
    rank0 = launch_rank(trainer) == 0
    if on_start is not None and rank0:
        on_start()
    cache_hit, pipeline, probe, probe_acc = None, None, None, None
    cols = tap_slices(source.backbone.channels, plan.taps)
    t0 = time.perf_counter()
    if use_cache:  # the frozen backbone runs once per image; the head trains on stored features
        bb = source.backbone
        feats, cache_hit = frozen_features(recipe, source, data, progress, write=rank0)
        cache_hit = cache_hit if spec.cache_dir is not None else None
        fit_data = _features_data(recipe, data, feats, cols)
        d = len(cols)
        net: nn.Module = nn.Sequential(nn.Flatten(), zero_head(nn.Linear(d, k)))
        if solver:
            probe = _probe(recipe, feats, cols, data, net[1])
            probe_acc = _accuracy(net[1], feats["test"][:, cols], data.test.labels)
        # no normalisation: the head sees the features as they are, exactly as through the backbone
        module = Classifier(net, k, torch.zeros(d), torch.ones(d),
                            **module_args(recipe, finetune_network(regime, plan.taps, bb.identity, True)))
        trainable = sum(p.numel() for p in net.parameters())
    else:
        bb = source.make(plan.pretrained)
        net = TransferNet(bb, k, plan.taps, zero_init=plan.pretrained)
        net.set_frozen(plan.frozen)
        if plan.probe_first:  # lp-ft: the head starts as the exact probe of the pretrained features
            feats, cache_hit = frozen_features(recipe, source, data, progress, write=rank0)
            probe = _probe(recipe, feats, cols, data, net.head)
            probe_acc = _accuracy(net.head, feats["test"][:, cols], data.test.labels)
        mean, std = ((torch.tensor(bb.mean), torch.tensor(bb.std)) if plan.pretrained else (data.mean, data.std))
        pipeline, on_device = augmentation(recipe, data)  # as `cnnlab train`: fitted to the training images
        module = Classifier(net, k, mean, std, augment=on_device, lr_scale=plan.lr_scale,
                            **module_args(recipe, finetune_network(regime, plan.taps, bb.identity, False)))
        fit_data = data
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    extract_s = time.perf_counter() - t0
    peak_lr = {} if solver else {f"group {i}": lr for i, lr in enumerate(module.peak_lrs())}
    open_folder(trainer, folder, recipe, "finetune")
    if rank0:  # the run folder exists now: the trackers follow this regime's fit, named by its folder
        trackers.start(trainer.loggers, folder.path, recipe)
    t1 = time.perf_counter()
    if solver:  # nothing to train: validate and test the solved head, and keep it as the run's checkpoint
        fit_s = probe.seconds
        if has_val:
            trainer.validate(module, datamodule=fit_data, verbose=False)
        best = ""
        tested = trainer.test(module, datamodule=fit_data, verbose=False)[0]
        fitted = perf(trainer)  # nothing trained: no throughput
        (folder.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(folder.path / "checkpoints" / "last.ckpt")
    else:
        try:
            trainer.fit(module, datamodule=fit_data, ckpt_path=ckpt_path)
        except Interrupted as e:
            e.resume = f"cnnlab finetune --resume {folder.path}"
            if trainer.is_global_zero:  # what was kept, and how to go on
                write_json(folder.path / "results.json", {
                    "run_dir": str(folder.path), "regime": regime, "interrupted": e.record(), "resume": e.resume,
                    "epochs": epochs_logged(folder.path / "metrics.csv"), "seed": recipe.seed,
                    "resumed_from": str(ckpt_path) if ckpt_path else None})
                trackers.finish(trainer.loggers, folder.path, "KILLED", e.checkpoint)
            raise
        fit_s = time.perf_counter() - t1
        fitted = perf(trainer)  # before test, which replaces the trainer's metrics
        best = trainer.checkpoint_callback.best_model_path if has_val else ""
        tested = test_fitted(trainer, recipe, module, fit_data, folder, best, progress)
    if not trainer.is_global_zero:
        return None
    trackers.finish(trainer.loggers, folder.path, "FINISHED", best or folder.path / "checkpoints" / "last.ckpt")
    return {
        "regime": regime,
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "chance": chance(tested["test/acc"], k, len(data.test.labels)),
        "best_val_acc": best_metric(folder.path / "metrics.csv", "val/acc"),
        "images_per_class": len(data.train.labels) // k,
        "images": {"train": len(data.train.labels), "val": len(data.val.labels), "test": len(data.test.labels)},
        "epochs": epochs_logged(folder.path / "metrics.csv"),  # read back: ddp_spawn trains in other processes
        "frozen_stages": sorted(plan.frozen),
        "warm_stages": sorted(plan.warm),
        "taps": list(plan.taps),
        "pretrained": plan.pretrained,
        "trainable_params": trainable,
        "peak_lr": peak_lr,
        "augment_fit": {op: {n: t.tolist() for n, t in fit.items()} for op, fit in pipeline.fitted.items()} if pipeline else None,
        "probe": {**probe.record(), "test_acc": probe_acc} if probe is not None else None,
        "features_cached": use_cache,
        "cache_hit": cache_hit,
        "features_s": extract_s,
        "fit_s": fit_s,
        **fitted,
        "per_class_acc": per_class_acc(tested, data.test.classes),
        "device": device_info(trainer),
        "checkpoint": best or str(folder.path / "checkpoints" / "last.ckpt"),
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "_module": module,
        "_probe": probe,
    }
