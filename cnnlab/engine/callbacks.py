"""The callbacks and logger every cnnlab Trainer carries: the run folder (made by global rank 0,
broadcast to the others), metrics.csv, and the throughput and peak-memory meter."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from cnnlab.env import host_peak_mib
from cnnlab.io import atomic, read_metrics


def quiet_lightning() -> None:
    """Keep the console for cnnlab's own output: no Lightning banners, tips or known-harmless warnings."""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def launch_rank(trainer: pl.Trainer) -> int:
    """The global rank this process will have once the processes meet, read before they do (from the
    launcher's environment: torchrun, SLURM, or Lightning's own launcher, whose children carry LOCAL_RANK)."""
    s = trainer.strategy
    return s.node_rank * s.num_processes + s.local_rank if hasattr(s, "node_rank") else 0


class RunFolder(pl.Callback):
    """Where a Trainer writes. Global rank 0 makes the folder before `fit` (`path`); when the processes
    meet, its name is broadcast to all of them, and checkpoints and metrics are pointed there."""

    def __init__(self, path: Path | None = None, keep_epochs_before: int | None = None):
        self.path = Path(path) if path is not None else None
        self.keep_epochs_before = keep_epochs_before  # a resumed fit keeps the metrics rows of these epochs

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        path = trainer.strategy.broadcast(str(self.path) if self.path is not None else None, src=0)
        if path is None:
            raise RuntimeError("no run folder: global rank 0 must make it before fit")
        self.path = Path(path)
        for ckpt in trainer.checkpoint_callbacks:
            ckpt.dirpath = str(self.path / "checkpoints")
        for logger in trainer.loggers:
            if isinstance(logger, MetricsCSV) and logger.path is None:
                # a resumed fit redoes the epochs after its checkpoint; anything else appends
                logger.start(self.path / "metrics.csv", self.keep_epochs_before if stage == "fit" else None)
        quiet_lightning()  # in ddp_spawn's workers too


class MetricsCSV(Logger):
    """metrics.csv, written by global rank 0: each row is appended as it is logged, and the file is
    fsynced at each epoch's rows, so a crash loses at most the step rows of the epoch it was in. The
    file is rewritten whole (atomically) only when a row brings a new column (a handful of times a
    run) and when a resumed fit cuts off the rows of the epochs it redoes."""

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str | None:
        return str(self.path.parent) if self.path else None

    def start(self, path: Path, keep_epochs_before: int | None = None) -> None:
        self.path = path
        if rank_zero_only.rank == 0:
            self.rows = read_metrics(path, keep_epochs_before)
            if self.rows or path.exists():
                self._rewrite()

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # recipe.yaml and the checkpoints hold them

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"epoch": int(metrics.get("epoch", 0)), "step": step,
               **{k: float(v) for k, v in metrics.items() if k != "epoch"}}
        self.rows.append(row)
        if self.path is None:
            return
        if not self.path.exists() or not set(row) <= set(self.columns):
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
            if any(not k.endswith("_step") for k in row if k not in ("epoch", "step")):  # an epoch's row
                f.flush()
                os.fsync(f.fileno())

    def _rewrite(self) -> None:
        if self.path is None:
            return
        keys = sorted(set().union(*self.rows) - {"epoch", "step"}) if self.rows else []
        self.columns = ["epoch", "step", *keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(self.rows)


class Throughput(pl.Callback):
    """Training images per second over every process, timed over training batches only (no
    validation, no set-up; the device synchronised at the epoch's first and last timestamps only, so
    steps still overlap with the CPU), and peak memory. Both are
    logged at each epoch's end, so they reach the main process from ddp_spawn's workers too."""

    def __init__(self) -> None:
        self.images, self.seconds, self._t0, self._last = 0, 0.0, 0.0, 0.0

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)  # kernels run asynchronously: wait for them
        return time.perf_counter()

    def on_fit_start(self, trainer, module) -> None:
        if module.device.type == "cuda":  # this fit's peak, not the largest of every run in this process
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0 = self._last = self._now(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])
        last = batch_idx + 1 >= trainer.num_training_batches
        self._last = self._now(module) if last else time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        # validation runs before this hook: count up to the last training batch only
        self.seconds += self._last - self._t0
        rate = self.images / self.seconds if self.seconds else 0.0
        module.log(THROUGHPUT, rate, reduce_fx="sum", sync_dist=True)  # processes run side by side
        module.log(HOST_PEAK, host_peak_mib(), reduce_fx="max", sync_dist=True)
        if module.device.type == "cuda":
            module.log(DEVICE_PEAK, torch.cuda.max_memory_allocated(module.device) / 2**20, reduce_fx="max",
                       sync_dist=True)


THROUGHPUT, HOST_PEAK, DEVICE_PEAK = "perf/train_images_per_s", "perf/host_peak_mib", "perf/device_peak_mib"


def perf(trainer: pl.Trainer) -> dict[str, Any]:
    """Throughput and peak memory of the last fit, from the metrics Lightning kept."""
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    memory = {"host_rss_mib": m.get(HOST_PEAK, host_peak_mib())}
    if DEVICE_PEAK in m:
        memory["device_allocated_mib"] = m[DEVICE_PEAK]
    return {"train_images_per_s": m.get(THROUGHPUT, 0.0), "peak_memory": memory}
