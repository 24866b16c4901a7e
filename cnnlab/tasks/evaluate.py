"""`cnnlab eval`: re-evaluate a run folder's (or a checkpoint file's) weights on the test split.
Any run folder cnnlab writes: `train` runs, `finetune` runs of every regime and a sweep's sub-runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab import runinfo
from cnnlab.data import ImageDataModule
from cnnlab.errors import UserError
from cnnlab.lit import Classifier
from cnnlab.recipe import Recipe, load as load_recipe


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
    from cnnlab.tasks.finetune import rebuild
    from cnnlab.tasks.train import assemble

    ckpt_path = runinfo.find_checkpoint(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams, raw = ckpt["hyper_parameters"], ckpt["hyper_parameters"]["recipe"]
    except Exception as e:
        raise UserError(f"{ckpt_path}: not a cnnlab checkpoint ({type(e).__name__}: {e})") from None
    recipe = load_recipe(None, list(overrides), base=raw, source=f"{ckpt_path} (embedded recipe)")
    try:
        if "finetune" in hparams:  # a fine-tuned TransferNet (or a head on cached features)
            data = ImageDataModule(recipe.data, seed=recipe.seed)
            data.setup("test")
            module = rebuild(recipe, hparams, ckpt["state_dict"])
        else:  # `cnnlab train`: the recipe's model
            a = assemble(recipe)
            data, module = a.data, a.module
            module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{ckpt_path}: its weights do not fit the network its recipe describes ({first})") from None
    # a checkpoint trained anywhere evaluates here: the run's accelerator and precision when this
    # machine has them, else whatever device is here at 32-bit (bf16/fp16 weights are cast up)
    t = recipe.trainer
    here = not t.preflight()
    accelerator, precision = (t.accelerator, t.precision) if here else ("auto", "32-true")
    return Loaded(ckpt_path, recipe, data, module, accelerator, precision)


def trainer(accelerator: str, precision: str, progress: bool):
    """A one-device Trainer that only evaluates: no logger, no checkpoints."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar

    return pl.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                      enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                      callbacks=[RichProgressBar(leave=False)] if progress else [])


def run(path: Path, progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Test a checkpoint's network on the test split its run used; writes eval.json to `out`, or
    to `eval_path`'s place. Returns the results (and where they were written)."""
    from cnnlab.tasks.train import per_class_acc

    c = load(path)
    t = trainer(c.accelerator, c.precision, progress)
    tested = t.test(c.module, datamodule=c.data, verbose=False)[0]
    results = {
        "checkpoint": str(c.ckpt_path),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": per_class_acc(tested, c.data.test.classes),
        "images": len(c.data.test.labels),
        "precision": c.precision,
        "trained_with": {"accelerator": c.recipe.trainer.accelerator, "precision": c.recipe.trainer.precision},
        "device": runinfo.device_info(t),
        "versions": runinfo.versions(),
    }
    out = Path(out) if out is not None else eval_path(Path(path), c.ckpt_path)
    runinfo.write_json(out, results)
    return {**results, "written": str(out)}


def eval_path(given: Path, ckpt_path: Path) -> Path:
    """Where eval.json goes: into the run folder given, or beside the checkpoint file given
    (`best.ckpt` -> `best.eval.json`)."""
    return given / "eval.json" if given.is_dir() else ckpt_path.with_name(f"{ckpt_path.stem}.eval.json")
