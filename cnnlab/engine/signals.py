"""SIGINT and SIGTERM during a fit: the current step finishes, a checkpoint is written at that step
(checkpoints/last.ckpt, which `--resume` continues from, mid-epoch included), and the run stops
with `Interrupted`, which the CLI turns into exit 130 or 143 and one line naming the resume
command. A second signal exits at once; the checkpoint on disk is whole (written atomically)."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch

from cnnlab.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(pl.Callback):
    """Installed for the fit (in the main thread only, where Python delivers signals). Every process
    decides together after each training step whether any of them was signalled, so all write the
    checkpoint (Lightning writes on global rank 0) and stop at the same step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second: now, leaving the last whole checkpoint
            os._exit(128 + signum)
        self.signum = signum

    def install(self) -> None:
        """This callback's handlers for SIGINT and SIGTERM, again at each stage: Lightning puts its own
        SIGTERM handler in place for every fit and test, which would end the process at the next
        validation or test batch with exit code 0 and no checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in SIGNALS:
            before = signal.signal(s, self._handle)
            self._previous.setdefault(s, before)

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.install()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.install()  # after Lightning has registered its SIGTERM handler for this fit

    def on_test_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.install()

    # kept after the fit: a signal during the test is recorded, the run finishes its last seconds
    # (test, results, plots) and the caller raises `after_training`; the caller restores the handlers

    def after_training(self, step: int, checkpoint: str) -> Interrupted | None:
        if self.signum is None:
            return None
        name = signal.Signals(self.signum).name
        e = Interrupted(name, self.signum, -1, step, checkpoint)
        e.args = (f"interrupted by {name} after training had finished: the test, results.json and plots were "
                  f"completed first",)
        return e

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        signum = self.signum or 0
        if trainer.world_size > 1:  # any process signalled: all stop here (one process needs no device round trip)
            mine = torch.tensor([float(signum)], device=module.device)
            signum = int(trainer.strategy.reduce(mine, reduce_op="max").item())
        if not signum:
            return
        ckpt = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(ckpt)  # every process: Lightning writes on global rank 0
        self.restore()
        raise Interrupted(signal.Signals(signum).name, signum, trainer.current_epoch, trainer.global_step, str(ckpt))


@contextmanager
def interruptible(what: str) -> Iterator[None]:
    """For a command's whole run (pack, the benches, sweeps and ablations): SIGINT or SIGTERM raises
    `Interrupted` where the program is, so that files being written are removed (cnnlab writes under
    temporary names) and the command can keep what it finished; without it SIGTERM would end the
    process on the spot, leaving its temporary files. A fit inside puts its own handler in place
    (StopOnSignal: it stops after the step) and puts this one back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        signal.signal(signum, lambda s, f: os._exit(128 + s))  # a second signal: now
        raise Interrupted(signal.Signals(signum).name, signum, what=what)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
