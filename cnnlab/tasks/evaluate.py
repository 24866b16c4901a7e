"""`cnnlab eval`: re-evaluate a run folder's (or a checkpoint file's) weights on the test split.
Any run folder cnnlab writes: `train` runs, `finetune` runs of every regime and a sweep's sub-runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab import runinfo
from cnnlab.errors import UserError
from cnnlab.recipe import validate


def run(path: Path, progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Test a checkpoint's network on the test split its run used; writes eval.json to `out`, or
    to `eval_path`'s place. Returns the results (and where they were written)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar

    from cnnlab.data import ImageDataModule
    from cnnlab.tasks.finetune import rebuild
    from cnnlab.tasks.train import assemble, per_class_acc

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
    t = recipe.trainer
    # a checkpoint trained anywhere evaluates here: the run's accelerator and precision when this
    # machine has them, else whatever device is here at 32-bit (bf16/fp16 weights are cast up)
    here = not t.preflight()
    accelerator, precision = (t.accelerator, t.precision) if here else ("auto", "32-true")
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         callbacks=[RichProgressBar(leave=False)] if progress else [])
    tested = trainer.test(module, datamodule=data, verbose=False)[0]
    results = {
        "checkpoint": str(ckpt_path),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": per_class_acc(tested, data.test.classes),
        "images": len(data.test.labels),
        "precision": precision,
        "trained_with": {"accelerator": t.accelerator, "precision": t.precision},
        "device": runinfo.device_info(trainer),
        "versions": runinfo.versions(),
    }
    out = Path(out) if out is not None else eval_path(Path(path), ckpt_path)
    runinfo.write_json(out, results)
    return {**results, "written": str(out)}


def eval_path(given: Path, ckpt_path: Path) -> Path:
    """Where eval.json goes: into the run folder given, or beside the checkpoint file given
    (`best.ckpt` -> `best.eval.json`)."""
    return given / "eval.json" if given.is_dir() else ckpt_path.with_name(f"{ckpt_path.stem}.eval.json")
