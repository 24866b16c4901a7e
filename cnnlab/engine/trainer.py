"""The one Trainer factory: training runs, evaluation, test-time augmentation and feature
extraction all get their pytorch_lightning.Trainer here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cnnlab.engine.callbacks import MetricsCSV, RunFolder
from cnnlab.io import save_tensors
from cnnlab.spec import TrainerSpec


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written as every cnnlab file is: under a temporary name unique to the writer,
    fsynced, renamed (a crash or a full disk leaves the previous checkpoint whole)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_tensors(Path(path), checkpoint)


def build_trainer(t: TrainerSpec, run: Path | RunFolder | None = None, callbacks: list[pl.Callback] = (),
                  has_val: bool = True, progress: bool = True, max_steps: int = -1,
                  root_dir: Path | None = None, loggers: list[Logger] = ()) -> pl.Trainer:
    """With `run` (a path, or a RunFolder that global rank 0 fills in before `fit`): a Trainer with
    the recipe's `trainer:` arguments, metrics.csv and checkpoints in the run folder, `loggers` (the
    recipe's trackers, cnnlab.engine.trackers) after MetricsCSV, which stays first; cnnlab's own
    samplers shard the data per process (`use_distributed_sampler=False`); `max_steps` ends a fit
    early (the profiler's few steps; the schedule still spans the recipe's epochs). Without: one device that
    only evaluates or predicts, at `t.accelerator` and `t.precision`: no logger, no checkpoints."""
    from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

    bar = [RichProgressBar(leave=False)] if progress else []
    common = dict(enable_progress_bar=progress, enable_model_summary=False)
    if run is None:
        return pl.Trainer(accelerator=t.accelerator, precision=t.precision, deterministic=t.deterministic, devices=1,
                          logger=False, enable_checkpointing=False, callbacks=[*callbacks, *bar], **common)
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    # last.ckpt on its own callback: Lightning's save_last only writes when a top-k checkpoint is
    # written, so after an epoch that did not improve val/acc it would be stale (and resume lose epochs)
    # written over in place (atomically), never as last-v1.ckpt: a fit stopped by a signal before its
    # first epoch ended left a last.ckpt this callback did not write, and --resume reads last.ckpt
    last = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    best = [ModelCheckpoint(filename="best", monitor="val/acc", mode="max", save_top_k=1,
                            enable_version_counter=False)] if has_val else []
    cbs: list[pl.Callback] = [folder, *best, last, *callbacks, *bar]  # trainer.checkpoint_callback: the first
    args = {**t.trainer_args(), "limit_val_batches": t.limit_val_batches if has_val else 0, "max_steps": max_steps}
    if root_dir is not None:  # where Lightning's own scratch files go (the tuner's checkpoints), else the working folder
        args["default_root_dir"] = str(root_dir)
    return pl.Trainer(**args, callbacks=cbs, logger=[MetricsCSV(), *loggers], num_sanity_val_steps=0,
                      use_distributed_sampler=False, plugins=[AtomicCheckpointIO()], **common)


def evaluator(accelerator: str = "auto", precision: str = "32-true", progress: bool = True) -> pl.Trainer:
    """A one-device Trainer that only evaluates or predicts."""
    return build_trainer(TrainerSpec(accelerator=accelerator, precision=precision), progress=progress)
