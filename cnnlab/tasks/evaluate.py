"""`cnnlab eval`: re-evaluate a run folder's (or a checkpoint file's) weights on the test split."""
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

    from cnnlab.tasks.train import assemble

    ckpt_path = runinfo.find_checkpoint(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        raw = ckpt["hyper_parameters"]["recipe"]
    except Exception as e:
        raise UserError(f"{ckpt_path}: not a cnnlab checkpoint ({type(e).__name__}: {e})") from None
    recipe = validate(raw, f"{ckpt_path} (embedded recipe)")
    a = assemble(recipe)
    a.module.load_state_dict(ckpt["state_dict"])
    run_dir = ckpt_path.parent.parent
    t = recipe.trainer
    trainer = pl.Trainer(accelerator=t.accelerator, devices=1, precision=t.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         callbacks=[RichProgressBar(leave=False)] if progress else [])
    tested = trainer.test(a.module, datamodule=a.data, verbose=False)[0]
    from cnnlab.tasks.train import per_class_acc

    results = {
        "checkpoint": str(ckpt_path),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": per_class_acc(tested, a.data.test.classes),
        "images": len(a.data.test.labels),
        "device": runinfo.device_info(trainer),
        "versions": runinfo.versions(),
    }
    runinfo.write_json(run_dir / "eval.json", results)
    return results
