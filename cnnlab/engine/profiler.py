"""Training steps timed through the engine's own Trainer, phase by phase: waiting for data, the
host-to-device copy, augmentation on the device, forward, backward, the optimizer step, and the
rest. Each phase boundary is a `time.perf_counter` read with the device synchronised first
(`torch.cuda.synchronize` on a GPU: without it, asynchronous kernels would be timed where the host
next waits, typically as "waiting for data"); on the CPU the work is synchronous.

Steps after a warm-up run in blocks of `block` steps, and each block runs under one condition of a
cycle (for example `phases`, then `plain`: the same steps with and without the instrumentation,
which is how its overhead is measured; or one thread count per block). A step lasts from the end of
the step before it (or the start of its epoch: the epoch's end, validation and checkpoints are not
counted) to its own end."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch

PHASES = ("data", "copy", "augment", "forward", "backward", "optimizer", "rest")
PHASED = "phases"  # the condition under which every boundary is timed


@dataclass
class Step:
    """One timed step: its condition, its seconds, and (under PHASED) the seconds of each phase."""

    condition: Any
    seconds: float
    images: int
    phases: dict[str, float] | None = None


@dataclass
class Timeline:
    """The boundaries of the step being run (perf_counter seconds)."""

    start: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    augment: float = 0.0
    images: int = 0


class StepProfiler(pl.Callback):
    """Times the steps of a fit (see the module's docstring); `steps` holds the timed ones. The
    cycle's conditions are put in place with `apply(condition)` before each block (PHASED turns
    the phase boundaries on). `time_limit` (seconds after the warm-up) ends the fit early: a very
    slow candidate costs seconds, not minutes."""

    def __init__(self, warmup: int, block: int, cycle: Sequence[Any], rounds: int,
                 apply: Callable[[Any], None] = lambda condition: None, time_limit: float | None = None,
                 on_step: Callable[[int, int], None] = lambda done, total: None):
        self.warmup, self.block, self.cycle, self.rounds = warmup, block, list(cycle), rounds
        self.apply, self.time_limit, self.on_step = apply, time_limit, on_step
        self.total = warmup + block * len(self.cycle) * rounds
        self.steps: list[Step] = []
        self.stopped_early = False
        self._now = Timeline()
        self._done = 0
        self._condition: Any = None
        self._phased = False
        self._device = torch.device("cpu")
        self._t_timed: float | None = None

    # --------------------------------------------------------------------------- the clock

    def clock(self) -> float:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    def _mark(self, name: str) -> None:
        if self._phased:
            self._now.marks[name] = self.clock()

    def condition_of(self, k: int) -> Any:
        """The condition of the k-th step of the fit (0-based): the warm-up runs under the first."""
        if k < self.warmup:
            return self.cycle[0]
        return self.cycle[((k - self.warmup) // self.block) % len(self.cycle)]

    # --------------------------------------------------------------------------- instrumentation

    def _wrap(self, module: pl.LightningModule) -> None:
        """The module's own hooks, timed at entry (instance attributes: Lightning looks the hooks up
        by name on the module)."""
        def entry(name: str, fn: Callable) -> Callable:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                self._mark(name)
                return fn(*args, **kwargs)
            return timed

        module.on_before_batch_transfer = entry("fetched", module.on_before_batch_transfer)
        module.on_after_batch_transfer = entry("copied", module.on_after_batch_transfer)
        module.training_step = entry("forward", module.training_step)
        # the module's pre-step checks (finite loss and gradients, divergence) are the optimizer step's
        module.on_before_optimizer_step = entry("optimizer", module.on_before_optimizer_step)
        augment = getattr(module, "augment", None)
        if augment is not None:
            @functools.wraps(augment)
            def augmented(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
                if not self._phased:
                    return augment(x, g)
                t0 = self.clock()
                out = augment(x, g)
                self._now.augment += self.clock() - t0
                return out
            module.augment = augmented

    # --------------------------------------------------------------------------- the hooks

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._device = trainer.strategy.root_device
        self._wrap(module)
        self._begin(0)

    def _begin(self, k: int) -> None:
        """Before the k-th step: its block's condition in place, its start read."""
        condition = self.condition_of(k)
        if condition != self._condition:
            self.apply(condition)
            self._condition = condition
        self._phased = condition == PHASED
        self._now = Timeline(start=self.clock())

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._now.start = self.clock()  # the epoch's end (validation, checkpoints) is not a step's

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._mark("backward")

    def on_after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._mark("backward_done")

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._now.images = len(batch[1])

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        end = self.clock()
        k = self._done
        if k >= self.warmup:
            if self._t_timed is None:
                self._t_timed = self._now.start
            self.steps.append(Step(self._condition, end - self._now.start, self._now.images,
                                   split(self._now, end) if self._phased else None))
        self._done += 1
        self.on_step(self._done, self.total)
        if self._done >= self.total or (self.time_limit is not None and self._t_timed is not None
                                        and end - self._t_timed > self.time_limit):
            self.stopped_early = self._done < self.total
            trainer.should_stop = True
            return
        self._begin(self._done)


def split(t: Timeline, end: float) -> dict[str, float]:
    """A phased step's seconds per phase, from its boundaries: data until the batch is fetched, the
    copy until it is on the device, then augmentation (timed inside), forward until the loss asks
    for backward, backward, and the optimizer step from the module's pre-step checks to the step's
    end; the rest is what lies between (normalisation, zeroing gradients, Lightning's hooks)."""
    m = t.marks
    need = ("fetched", "copied", "forward", "backward", "backward_done", "optimizer")
    if any(k not in m for k in need):
        missing = [k for k in need if k not in m]
        raise RuntimeError(f"a phase boundary was never reached: {missing}")  # the engine's hooks changed
    total = end - t.start
    out = {"data": m["fetched"] - t.start, "copy": m["copied"] - m["fetched"], "augment": t.augment,
           "forward": m["backward"] - m["forward"], "backward": m["backward_done"] - m["backward"],
           "optimizer": end - m["optimizer"]}
    out["rest"] = total - sum(out.values())
    return out
