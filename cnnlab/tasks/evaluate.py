"""`cnnlab eval`: re-evaluate a run folder's (or a checkpoint file's) weights on the test split.
Any run folder cnnlab writes: `train` runs, `finetune` runs of every regime and a sweep's sub-runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab import runinfo
from cnnlab.errors import UserError
from cnnlab.recipe import validate


def run(path: Path, progress: bool = True) -> dict[str, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar

    from cnnlab.data import ImageDataModule
    from cnnlab.tasks.finetune import rebuild
    from cnnlab.tasks.train import assemble

    ckpt_path = runinfo.find_checkpoint(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams, raw = ckpt["hyper_parameters"], ckpt["hyper_parameters"]["recipe"]
    except Exception as e:
        raise UserError(f"{ckpt_path}: not a cnnlab checkpoint ({type(e).__name__}: {e})") from None
    recipe = validate(raw, f"{ckpt_path} (embedded recipe)")
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
    run_dir = ckpt_path.parent.parent
    t = recipe.trainer
    trainer = pl.Trainer(accelerator=t.accelerator, devices=1, precision=t.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         callbacks=[RichProgressBar(leave=False)] if progress else [])
    tested = trainer.test(module, datamodule=data, verbose=False)[0]
    results = {
        "checkpoint": str(ckpt_path),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": dict(zip(data.test.classes, module.test_per_class_acc)),
        "images": len(data.test.labels),
        "device": runinfo.device_info(module.device),
        "versions": runinfo.versions(),
    }
    runinfo.write_json(run_dir / "eval.json", results)
    return results
