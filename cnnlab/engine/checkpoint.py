"""Every kind of cnnlab checkpoint read and rebuilt in one place: `cnnlab train` runs (the recipe's
model), fine-tuned TransferNets, and heads trained on cached features (put back onto the
pretrained backbone)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import ImageDataModule
from cnnlab.engine.assemble import assemble, module_args
from cnnlab.engine.module import Classifier
from cnnlab.errors import UserError
from cnnlab.io import Refused, load_tensors
from cnnlab.models.weights import load_into, read_checkpoint
from cnnlab.recipe import Recipe, load as load_recipe
from cnnlab.transfer import BACKBONES, TransferNet


# A resumed run continues the recorded one: these keys only say where it runs, not what it computes.
RESUME_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.strategy", "data.num_workers")


def check_resume_overrides(overrides: list[str]) -> None:
    """`--set` on `--resume` (train and finetune): only keys that leave the computation as recorded."""
    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUME_KEYS]
    if bad:
        raise UserError(f"--resume continues the run as recorded in its recipe.yaml; --set {bad[0]} would change it "
                        f"(max_epochs, for one, reshapes the learning-rate schedule): start a new run instead. "
                        f"On resume --set takes only {', '.join(RESUME_KEYS)}")


def epochs_done(ckpt_path: Path) -> int:
    """Training epochs a checkpoint has completed (where a resumed run starts); a file that is not a
    whole checkpoint of a fit is one line."""
    try:
        state = load_tensors(ckpt_path)
        return int(state["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"])
    except Refused as e:
        raise UserError(f"--resume: {ckpt_path} {e}") from None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"--resume: {ckpt_path} is not a checkpoint of a cnnlab fit: no training loop state inside") from None


def finetune_network(regime: str, taps: tuple[int, ...], backbone_identity: str, head_only: bool) -> dict[str, Any]:
    """What a fine-tuned checkpoint needs besides its recipe to rebuild the network (`rebuild`)."""
    return {"finetune": {"regime": regime, "taps": list(taps), "head_only": head_only, "backbone": backbone_identity}}


def rebuild_finetuned(recipe: Recipe, hparams: dict[str, Any], state_dict: dict[str, torch.Tensor],
                      misfit: str = "the checkpoint's weights do not fit its network") -> Classifier:
    """The classifier a `cnnlab finetune` checkpoint holds: TransferNet on the backbone its recipe names.
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
        load_into(net.head, {k.removeprefix("net.1."): v for k, v in state_dict.items() if k.startswith("net.1.")}, misfit)
        return Classifier(net, k, torch.tensor(bb.mean), torch.tensor(bb.std), **module_args(recipe, {"finetune": net_hp}))
    bb = build(spec.weights, False)  # the architecture; the weights are all in the checkpoint
    net = TransferNet(bb, k, tuple(net_hp["taps"]))
    module = Classifier(net, k, state_dict["mean"].flatten(), state_dict["std"].flatten(),
                        **module_args(recipe, {"finetune": net_hp}))
    load_into(module, state_dict, misfit)
    return module


@dataclass
class Loaded:
    """A checkpoint's network with its test split, and how this machine runs it."""

    ckpt_path: Path
    recipe: Recipe
    data: ImageDataModule  # set up for "test"
    module: Classifier
    accelerator: str
    precision: str


def load(path: Path, overrides: list[str] = ()) -> Loaded:
    """The checkpoint a run folder (or a .ckpt path) holds, rebuilt from its embedded recipe, with
    `overrides` (--set KEY=VALUE) applied to that recipe."""
    c = read_checkpoint(path)
    recipe = load_recipe(None, list(overrides), base=c.hparams["recipe"], source=f"{c.path} (embedded recipe)")
    misfit = f"{c.path}: its weights do not fit the network its recipe describes"
    try:
        if "finetune" in c.hparams:  # a fine-tuned TransferNet (or a head on cached features)
            data = ImageDataModule(recipe.data, seed=recipe.seed)
            data.setup("test")
            module = rebuild_finetuned(recipe, c.hparams, c.state_dict, misfit)
        else:  # `cnnlab train`: the recipe's model
            a = assemble(recipe)
            data, module = a.data, a.module
            load_into(module, c.state_dict, misfit)
    except KeyError as e:  # the normalisation buffers of a full checkpoint
        raise UserError(f"{misfit}: missing {e}") from None
    # a checkpoint trained anywhere evaluates here: the run's accelerator and precision when this
    # machine has them, else whatever device is here at 32-bit (bf16/fp16 weights are cast up)
    t = recipe.trainer
    here = not t.preflight()
    accelerator, precision = (t.accelerator, t.precision) if here else ("auto", "32-true")
    return Loaded(c.path, recipe, data, module, accelerator, precision)
