"""The LightningModule: the network injected, one shared step, torchmetrics for every metric."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.engine.optim import build_optimizer, lr_factor, step_seed
from cnnlab.errors import Diverged
from cnnlab.precision import LowPrecision, check_finite
from cnnlab.precision.finite import diverged_message
from cnnlab.spec import OptimSpec, ScheduleSpec

PER_CLASS = "test/acc_class_"  # + class index: per-class test accuracy in trainer.test's results


class Classifier(pl.LightningModule):
    """Cross-entropy image classifier. Batches arrive as uint8 (B, C, H, W); augmentation (device
    mode) and normalisation happen on the training device, after the transfer. Metrics are
    torchmetrics, so val/test values are reduced over every process of a data-parallel run."""

    def __init__(self, net: nn.Module, num_classes: int, mean: Tensor, std: Tensor, *, optim: OptimSpec,
                 schedule: ScheduleSpec, seed: int = 0, channels_last: bool = True,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 lr_scale: dict[str, float] | None = None, hparams: dict | None = None):
        super().__init__()
        self.net, self.augment, self.lr_scale = net, augment, lr_scale
        self.exploring = False  # True under a learning-rate finder: a non-finite loss ends the fit, no Diverged
        self.optim, self.schedule, self.seed = optim, schedule, seed
        # what `cnnlab eval` and backbones need to rebuild this module from its checkpoint alone
        self.save_hyperparameters({**(hparams or {}), "num_classes": num_classes}, logger=False)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss = MeanMetric(nan_strategy="ignore")  # a non-finite training loss stops the run (on_before_optimizer_step)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()  # weighted by images: exact when processes hold unequal shards
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_loss = MeanMetric()
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        self._gen: torch.Generator | None = None
        weights = getattr(optim, "weights", None)  # optim.weights: 16-bit master weights
        self.lowp = LowPrecision(net, weights.format(), weights.rounding) if weights is not None else None
        self._loss: Tensor | None = None  # the training step's loss, for the finite check
        self._high = 0  # consecutive steps with the loss above optim.divergence's limit
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        return self.lowp(self.net, x) if self.lowp is not None else self.net(x)

    def _seed_step(self) -> None:
        seed = step_seed(self.seed, self.global_rank, self.global_step)
        if self.device.type == "cpu":
            # torch.manual_seed would also queue a lazy CUDA seeding call with a formatted stack trace
            # on every step of a CPU run (2.5 ms a step, and a list that grows for the whole run)
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)  # CPU and every accelerator's generators
        if self._gen is None:
            self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)
        if self.lowp is not None:  # stochastic rounding's own stream: resumes exactly too
            self.lowp.seed(seed + 0x9E3779B9, self.device)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        if self._trainer is not None and self.trainer.training:
            self._keep_statistics()
            self._seed_step()
            if self.augment is not None:
                x = self.augment(x, self._gen)
        return self.prepare(x), y

    def prepare(self, x: Tensor) -> Tensor:
        """A uint8 batch (on the device) -> the network's input: scaled, normalised, in the weights'
        dtype and memory format. bf16-true / 64-true convert the module, never the batch; mixed
        modes keep float32 weights and autocast does the rest."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = (x - self.mean) / self.std
        return x.to(dtype=self.dtype).contiguous(memory_format=self.memory_format)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.optim.label_smoothing if stage == "train" else 0.0)
        getattr(self, f"{stage}_acc").update(logits, y)  # forward() would also compute a batch value nobody reads
        getattr(self, f"{stage}_loss").update(loss.detach().float(), len(y))
        if stage == "train":
            self._loss = loss.detach()
            # epoch means are logged once, at the epoch's end: Lightning's self.log costs ~1 ms a
            # call, as much as a whole step of a linear head on cached features
            if self.global_step % self.trainer.log_every_n_steps == 0:
                self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        elif stage == "test":
            self.test_per_class.update(logits, y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        # metric objects: Lightning computes them once, reduced over every process
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "train")
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), prog_bar=stage != "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        # per-class accuracy leaves through Lightning's own path (trainer.test's results), which
        # also carries it back from ddp_spawn's workers
        per_class = self.test_per_class.compute()
        self.log_dict({f"{PER_CLASS}{i}": acc for i, acc in enumerate(per_class)})
        self.test_per_class.reset()

    def _keep_statistics(self) -> None:
        """A copy of the running statistics (BatchNorm's) before this step's forward updates them,
        so that a step that diverges can be undone whole (a few floats a channel)."""
        skip = set(self.lowp.names) if self.lowp is not None else set()
        self._stats = {n: b.detach().clone() for n, b in self.net.named_buffers() if b.is_floating_point() and n not in skip}

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite loss or gradient stops the run before the step is applied, with that state
        saved. With a gradient scaler (16-mixed) an infinite gradient is the scaler's to skip."""
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        grads = [] if scaled else [p.grad for p in self.parameters() if p.grad is not None]
        if self.lowp is not None:
            grads += self.lowp.grads()
        what = check_finite(self._loss, grads)
        div, limit = self.optim.divergence, None
        if div is not None:
            limit = div.loss_above * math.log(self.hparams["num_classes"])
        high = what is None and limit is not None and float(self._loss) > limit
        # decided over every process, so that all of them stop (and save) at this step together: a
        # loss that is not finite on one rank alone (checked without its gradients under a scaler)
        # would otherwise have that rank save and wait at a barrier while the others enter the next
        # all-reduce
        nonfinite = what is not None
        if self.trainer.world_size > 1:  # one small all-reduce; a single process decides alone
            flags = torch.tensor([float(nonfinite), float(high)], device=self.device)
            nonfinite, high = (bool(f) for f in self.trainer.strategy.reduce(flags, reduce_op="sum").tolist())
        if not nonfinite and not high:
            self._high = 0
            return
        if nonfinite and self.exploring:  # a learning-rate finder drives the loss up on purpose: end its fit
            self.trainer.should_stop = True
            return
        if nonfinite:
            what = what or "the loss or a gradient was not finite in another process"
            ckpt = self._save_before_step("last-finite.ckpt")
            raise Diverged(diverged_message(what, self.global_step, self.current_epoch, str(ckpt), self.trainer.precision,
                                            self.lowp.fmt.name if self.lowp is not None else None), self.global_step, str(ckpt))
        # finite, but far above a uniform guess's loss: a run of such steps is a run that diverged
        self._high += 1
        if self._high == 1:  # the last state before the loss left the range
            self._save_before_step("before-divergence.ckpt")
        if self._high >= div.steps:
            ckpt = self._checkpoint_dir() / "before-divergence.ckpt"
            raise Diverged(f"training diverged at step {self.global_step} (epoch {self.current_epoch}): the loss stayed "
                           f"above {limit:.3g} ({div.loss_above:g} x ln {self.hparams['num_classes']}, a uniform guess's "
                           f"loss) for {div.steps} steps, {float(self._loss):.3g} at the last. Stopped before applying "
                           f"that step; the state at the first of those steps is in {ckpt}. Try: lower optim.lr "
                           f"(or add warm-up: schedule.warmup_epochs); optim.divergence sets the limit (null: no limit)",
                           self.global_step, str(ckpt))

    # the training epoch's running means (loss, accuracy) and the divergence count, so that a
    # checkpoint taken mid-epoch resumes with the epoch's metrics as they were
    _RESUMED = ("train_loss", "train_acc")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cnnlab_epoch"] = {"high": self._high, **{
            n: {"update_count": getattr(self, n)._update_count,
                "state": {k: v.detach().clone() for k, v in getattr(self, n).metric_state.items()}}
            for n in self._RESUMED}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("cnnlab_epoch")
        if not saved:
            return
        self._high = saved["high"]
        for n in self._RESUMED:
            m = getattr(self, n)
            for k, v in saved[n]["state"].items():
                setattr(m, k, v.to(getattr(m, k).device))
            m._update_count = saved[n]["update_count"]
            m._computed = None

    def _checkpoint_dir(self) -> Path:
        return Path(self.trainer.checkpoint_callback.dirpath or self.trainer.default_root_dir)

    def _save_before_step(self, name: str) -> Path:
        """A checkpoint of the state before this step: the weights and optimizer as they are (the
        step is not applied yet), the running statistics as they were before this step's forward.
        Every process calls it (Lightning writes on global rank 0); training goes on with the
        statistics this step's forward made."""
        ckpt = self._checkpoint_dir() / name
        with torch.no_grad():
            now = {n: self.net.get_buffer(n).clone() for n in self._stats}
            for n, b in self._stats.items():
                self.net.get_buffer(n).copy_(b)
            self.trainer.save_checkpoint(ckpt)
            for n, b in now.items():
                self.net.get_buffer(n).copy_(b)
        return ckpt

    def peak_lrs(self) -> list[float]:
        """The learning rate of each parameter group the optimizer is built with (the schedule's peak)."""
        lowp = (self.lowp, self.net) if self.lowp is not None else None
        return [g["lr"] for g in build_optimizer(list(self.net.named_parameters()), self.optim, self.lr_scale, lowp).param_groups]

    def _stepping_batches(self) -> int:
        """Lightning's estimated_stepping_batches, counted from the data module's loader: Lightning's
        own property sets up the training loader to count it, before a resumed fit restores the
        loops, so the loader would never get its saved mid-epoch state."""
        t = self.trainer
        dm = t.datamodule
        if dm is None:
            return t.estimated_stepping_batches
        n = len(dm.train_dataloader())
        limit = t.limit_train_batches
        n = int(n * limit) if isinstance(limit, float) else min(n, int(limit))
        total = math.ceil(n / t.accumulate_grad_batches) * max(t.max_epochs, 1)
        return min(total, t.max_steps) if t.max_steps != -1 else total

    def configure_optimizers(self):
        lowp = (self.lowp, self.net) if self.lowp is not None else None
        opt = build_optimizer(list(self.net.named_parameters()), self.optim, self.lr_scale, lowp)
        total = self._stepping_batches()
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, per_epoch, self.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
