"""`cnnlab finetune`: recipe(s) -> one regime trained and tested, or a sweep of every regime at every
data size (the lecture's similar/different x little/lots table), written to a run folder."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from cnnlab import runinfo
from cnnlab.augment import build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.data import ImageDataModule, Split
from cnnlab.data.module import describe, per_class
from cnnlab.errors import UserError
from cnnlab.lit import Classifier, build_trainer
from cnnlab.recipe import Recipe
from cnnlab.tasks.train import module_args, per_class_acc, require_one_process
from cnnlab.transfer import BACKBONES, REGIMES, Backbone, FreezeSchedule, Plan, TransferNet, choose_regime
from cnnlab.transfer.regimes import stage_taps, zero_head
from cnnlab.transfer.features import cache_key, cached_features, extract, tap_slices
from cnnlab.transfer.probe import Probe, fit_cv
from cnnlab.transfer.similarity import Similarity, judge, stage_probes
from cnnlab.transfer.spec import FinetuneSpec


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
    feats = extract(source.backbone, {"train": sample}, recipe.data.batch_size, recipe.trainer.accelerator)["train"]
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


def _network(regime: str, plan: Plan, backbone: Backbone, head_only: bool) -> dict[str, Any]:
    """What a checkpoint needs besides its recipe to rebuild the network (`rebuild`, `cnnlab eval`)."""
    return {"finetune": {"regime": regime, "taps": list(plan.taps), "head_only": head_only,
                         "backbone": backbone.identity}}


def rebuild(recipe: Recipe, hparams: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Classifier:
    """The classifier a `fit_regime` checkpoint holds: TransferNet on the backbone its recipe names.
    A head trained on cached features (linear, stages) goes back onto the pretrained backbone, read
    from finetune.weights, with the backbone's normalisation; every other checkpoint holds all weights."""
    spec, net_hp, k = recipe.finetune, hparams["finetune"], hparams["num_classes"]
    build = BACKBONES.get(spec.backbone)
    if net_hp["head_only"]:
        bb = build(spec.weights, True)
        if bb.identity != net_hp["backbone"]:
            raise UserError(f"finetune.weights: {spec.weights} is {bb.identity}, not the backbone this head was "
                            f"trained on ({net_hp['backbone']})")
        net = TransferNet(bb, k, tuple(net_hp["taps"]))
        net.head.load_state_dict({"weight": state_dict["net.1.weight"], "bias": state_dict["net.1.bias"]})
        return Classifier(net, k, torch.tensor(bb.mean), torch.tensor(bb.std), **module_args(recipe, {"finetune": net_hp}))
    bb = build(spec.weights, False)  # the architecture; the weights are all in the checkpoint
    net = TransferNet(bb, k, tuple(net_hp["taps"]))
    module = Classifier(net, k, state_dict["mean"].flatten(), state_dict["std"].flatten(),
                        **module_args(recipe, {"finetune": net_hp}))
    module.load_state_dict(state_dict)
    return module


def frozen_features(recipe: Recipe, source: Source, data: ImageDataModule, progress: bool = False) -> tuple[dict[str, torch.Tensor], bool]:
    """The pretrained backbone's pooled taps of every split, through the feature cache."""
    bb, splits = source.backbone, {"train": data.train, "val": data.val, "test": data.test}
    key = cache_key(bb, recipe.data, recipe.seed, data.image_size, splits)
    return cached_features(bb, splits, key, recipe.finetune.cache_dir, recipe.data.batch_size, recipe.trainer.accelerator,
                           progress)


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


def fit_regime(recipe: Recipe, source: Source, data: ImageDataModule, regime: str, run_dir: Path,
               progress: bool = True, callbacks: list[pl.Callback] = ()) -> dict[str, Any]:
    """Train one regime and test it; returns its results (also the module, under '_module').
    `recipe.finetune` decides the regime's parameters; `source` only supplies the backbone."""
    spec = recipe.finetune
    plan: Plan = REGIMES.get(regime)(len(source.backbone.stages), spec)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    k = data.num_classes
    # the head reads frozen features only: compute them once (stored when cache_dir is set), and solve
    # the head exactly (probe: solver) or train it on them (probe: sgd); augmentation needs the images
    use_cache = plan.cached and not recipe.augment.ops and (spec.cache_dir is not None or spec.probe == "solver")
    solver = use_cache and spec.probe == "solver"  # the head is solved, not trained
    cache_hit, pipeline, probe, probe_acc = None, None, None, None
    cols = tap_slices(source.backbone.channels, plan.taps)
    t0 = time.perf_counter()
    if use_cache:  # the frozen backbone runs once per image; the head trains on stored features
        bb = source.backbone
        feats, cache_hit = frozen_features(recipe, source, data, progress)
        cache_hit = cache_hit if spec.cache_dir is not None else None
        fit_data = _features_data(recipe, data, feats, cols)
        d = len(cols)
        net: nn.Module = nn.Sequential(nn.Flatten(), zero_head(nn.Linear(d, k)))
        if solver:
            probe = _probe(recipe, feats, cols, data, net[1])
            probe_acc = _accuracy(net[1], feats["test"][:, cols], data.test.labels)
        # no normalisation: the head sees the features as they are, exactly as through the backbone
        module = Classifier(net, k, torch.zeros(d), torch.ones(d), **module_args(recipe, _network(regime, plan, bb, True)))
        trainable = sum(p.numel() for p in net.parameters())
    else:
        bb = source.make(plan.pretrained)
        net = TransferNet(bb, k, plan.taps, zero_init=plan.pretrained)
        net.set_frozen(plan.frozen)
        if plan.probe_first:  # lp-ft: the head starts as the exact probe of the pretrained features
            feats, cache_hit = frozen_features(recipe, source, data, progress)
            probe = _probe(recipe, feats, cols, data, net.head)
            probe_acc = _accuracy(net.head, feats["test"][:, cols], data.test.labels)
        mean, std = ((torch.tensor(bb.mean), torch.tensor(bb.std)) if plan.pretrained else (data.mean, data.std))
        pipeline = build_pipeline(recipe.augment.ops, data.train.images)  # as `cnnlab train`: fitted to the training images
        loader = pipeline is not None and recipe.augment.where == "loader"
        data.train_transform = per_sample_transform(pipeline, tuple(data.train.images.shape[-2:])) if loader else None
        augment = pipeline if recipe.augment.where == "device" else None
        module = Classifier(net, k, mean, std, augment=augment, lr_scale=plan.lr_scale,
                            **module_args(recipe, _network(regime, plan, bb, False)))
        fit_data = data
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        callbacks = [FreezeSchedule(plan, spec.freeze_epochs), *callbacks]
    extract_s = time.perf_counter() - t0
    has_val = len(data.val.labels) > 0
    trainer = build_trainer(recipe, run_dir, [runinfo.Throughput(), *callbacks], has_val=has_val, progress=progress)
    t1 = time.perf_counter()
    if solver:  # nothing to train: validate and test the solved head, and keep it as the run's checkpoint
        fit_s = probe.seconds
        if has_val:
            trainer.validate(module, datamodule=fit_data, verbose=False)
        best = ""
        tested = trainer.test(module, datamodule=fit_data, verbose=False)[0]
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    else:
        trainer.fit(module, datamodule=fit_data)
        fit_s = time.perf_counter() - t1
        best = trainer.checkpoint_callback.best_model_path if has_val else ""
        tested = trainer.test(module, datamodule=fit_data, ckpt_path=best or None, verbose=False)[0]
    groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
    return {
        "regime": regime,
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "best_val_acc": runinfo.best_metric(run_dir / "metrics.csv", "val/acc"),
        "images_per_class": len(data.train.labels) // k,
        "images": {"train": len(data.train.labels), "val": len(data.val.labels), "test": len(data.test.labels)},
        "epochs": trainer.current_epoch,
        "frozen_stages": sorted(plan.frozen),
        "warm_stages": sorted(plan.warm),
        "taps": list(plan.taps),
        "pretrained": plan.pretrained,
        "trainable_params": trainable,
        "peak_lr": {f"group {i}": g.get("initial_lr", g["lr"]) for i, g in enumerate(groups)},
        "augment_fit": {op: {n: t.tolist() for n, t in fit.items()} for op, fit in pipeline.fitted.items()} if pipeline else None,
        "probe": {**probe.record(), "test_acc": probe_acc} if probe is not None else None,
        "features_cached": use_cache,
        "cache_hit": cache_hit,
        "features_s": extract_s,
        "fit_s": fit_s,
        **runinfo.perf(trainer),
        "per_class_acc": per_class_acc(tested, data.test.classes),
        "device": runinfo.device_info(trainer),
        "checkpoint": best or str(run_dir / "checkpoints" / "last.ckpt"),
        "_module": module,
        "_probe": probe,
    }


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def _meta(recipe: Recipe, source: Source) -> dict[str, Any]:
    return {"backbone": source.spec.backbone, "weights": source.backbone.identity, "backbone_source": source.backbone.source,
            "data": recipe.data.source, "classes": recipe.data.classes, "image_size": recipe.data.image_size,
            "declared_similar": source.spec.similar, "stage_channels": source.backbone.channels}


def run(recipe: Recipe, regime: str | None = None, progress: bool = True,
        on_data: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune with one regime (the recipe's, or `regime`); writes the run folder, returns results.
    `on_data` gets the data report once the data is loaded and checked."""
    require_one_process(recipe, "finetune")
    source = load_source(recipe)
    data = load_data(recipe, source)
    chosen, why, sim = resolve(regime or source.spec.regime, recipe, source, data)
    data_report = describe(data)
    if on_data is not None:  # once every check has passed
        on_data(data_report)
    run_dir = runinfo.new_run_dir(recipe.output.dir, recipe.output.name or "finetune")
    runinfo.write_recipe(run_dir, recipe.dump())
    t0 = time.perf_counter()
    r = _public(fit_regime(recipe, source, data, chosen, run_dir, progress))
    results = {"run_dir": str(run_dir), **_meta(recipe, source), "asked": regime or source.spec.regime,
               "why": why, "similar": sim.similar if sim else source.spec.similar,
               "similarity": asdict(sim) if sim else None, **r, "wall_time_s": time.perf_counter() - t0,
               "skipped_images": data.skipped, "data": data_report, "versions": runinfo.versions(), "seed": recipe.seed}
    runinfo.write_json(run_dir / "results.json", results)
    return results


def sweep(recipes: list[tuple[str, Recipe]], progress: bool = True) -> dict[str, Any]:
    """Every regime of `finetune.sweep.regimes` at every size of `finetune.sweep.sizes`, for each recipe
    (one per row of the lecture's table); writes regimes.json, results.json and regimes.png."""
    for _, r in recipes:
        require_one_process(r, "finetune")
    sources = [(name, r, load_source(r)) for name, r in recipes]  # all weights checked before any work
    for name, r, src in sources:
        if src.spec.similar is None and src.spec.sweep.sizes[0] == 1:
            raise UserError(f"finetune.sweep.sizes ({name}): auto's similarity probes need at least 2 images per class, "
                            "got size 1; set finetune.similar: true or false")
    first = recipes[0][1]
    run_dir = runinfo.new_run_dir(first.output.dir, first.output.name if len(recipes) == 1 else "transfer-grid")
    t0 = time.perf_counter()
    rows, cells, device = [], [], None
    for name, recipe, source in sources:
        sub = run_dir / name if len(recipes) > 1 else run_dir
        sub.mkdir(exist_ok=True)
        runinfo.write_recipe(sub, recipe.dump())
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
                runinfo.write_json(run_dir / "regimes.json", {"runs": rows + got})  # partial results survive a crash
            rows += got
            best = max(got, key=lambda g: g["test_acc"])
            acc = {g["regime"]: g["test_acc"] for g in got}
            cells.append({"recipe": name, "similar": sim.similar, "probes": sim.probes, "size": size,
                          "best": best["regime"], "best_acc": best["test_acc"], "auto": auto, "why": why,
                          "auto_acc": acc.get(auto), "scratch_acc": acc.get("scratch"), "skipped_images": data.skipped})
    wall = time.perf_counter() - t0
    results = {"run_dir": str(run_dir), "recipes": {n: _meta(r, src) for n, r, src in sources}, "grid": cells,
               "wall_time_s": wall, "device": device,
               "versions": runinfo.versions(), "seed": first.seed}
    runinfo.write_json(run_dir / "regimes.json", {"runs": rows})
    runinfo.write_json(run_dir / "results.json", results)
    if first.output.plots:
        from cnnlab.report import plot_regimes

        plot_regimes(rows, run_dir / "regimes.png")
    results["runs"] = rows
    return results
