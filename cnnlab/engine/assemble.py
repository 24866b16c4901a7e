"""A recipe assembled into the parts a Trainer runs: the data module (loaded), the network, the
augmentation fitted to the training images, and the LightningModule around them."""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl

from cnnlab.augment import Pipeline, build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.conv.module import summary, swap
from cnnlab.data import ImageDataModule
from cnnlab.engine.module import PER_CLASS, Classifier
from cnnlab.errors import UserError
from cnnlab.models import build_model
from cnnlab.models.checkpointing import checkpoint_stages
from cnnlab.spec import Training as Recipe  # any recipe with the training sections


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


def augmentation(recipe: Recipe, data: ImageDataModule) -> tuple[Pipeline | None, Pipeline | None]:
    """The recipe's augmentation fitted to the training images, and what the module applies on the
    device; in loader mode the data module gets the per-sample transform. Without ops a packed split
    is never gathered whole."""
    pipeline = build_pipeline(recipe.augment.ops, data.train.images) if recipe.augment.ops else None
    loader = pipeline is not None and recipe.augment.where == "loader"
    data.train_transform = per_sample_transform(pipeline, tuple(data.train.shape[-2:])) if loader else None
    return pipeline, pipeline if recipe.augment.where == "device" else None


def assemble(recipe: Recipe) -> Assembled:
    """Data (loaded, so a bad root fails here, before any folder is made) and the module."""
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    data = ImageDataModule(recipe.data, seed=recipe.seed)
    data.setup("fit")
    net = build_model(recipe.model.name, data.in_channels, data.num_classes, **recipe.model.kwargs())
    impl = recipe.model.conv_impl
    conv = None if impl == "direct" else summary(impl, swap(net, impl))
    if recipe.model.activation_checkpointing:
        checkpoint_stages(net, recipe.model.name)
    pipeline, on_device = augmentation(recipe, data)
    module = Classifier(net, data.num_classes, data.mean, data.std, augment=on_device, **module_args(recipe))
    return Assembled(data, module, pipeline, conv)


def processes(recipe: Recipe) -> bool:
    """Whether the recipe's trainer runs several processes (data parallel)."""
    t = recipe.trainer
    return t.strategy != "auto" or t.num_nodes > 1 or (isinstance(t.devices, int) and t.devices > 1)


def require_one_process(recipe: Recipe, command: str, why: str = "Data-parallel training is `cnnlab train`'s "
                        "and `cnnlab finetune`'s") -> None:
    """Commands that make several runs (sweeps, ablations) run in one process: each process of a
    data-parallel run would make its own folders."""
    t = recipe.trainer
    if processes(recipe):
        raise UserError(f"trainer: `cnnlab {command}` runs in one process (devices 1 or auto, strategy auto, num_nodes 1); "
                        f"got devices {t.devices}, strategy {t.strategy}, num_nodes {t.num_nodes}. {why}")


def per_class_acc(tested: dict[str, float], classes: list[str]) -> dict[str, float]:
    """Per-class test accuracy from trainer.test's results (see Classifier.on_test_epoch_end)."""
    return {name: float(tested[f"{PER_CLASS}{i}"]) for i, name in enumerate(classes)}


def chance(test_acc: float, classes: int, images: int) -> dict[str, float | bool]:
    """Whether a test accuracy is at chance level: within two binomial standard errors above a
    uniform guess's 1/classes on this many test images (a collapsed model predicting one class of a
    balanced test split scores exactly 1/classes)."""
    p = 1 / classes
    limit = p + 2 * math.sqrt(p * (1 - p) / max(1, images))
    return {"guess_acc": p, "at_chance": test_acc <= limit}
