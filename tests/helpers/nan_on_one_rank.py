"""`cnnlab ARGS...` with the training loss of global rank 1 replaced by NaN at step 3, as if that
process alone had met a bad batch: the other processes' losses and gradients stay finite."""
import sys

import pytorch_lightning as pl
import torch

import cnnlab.engine.run as run


class NaNOnRank1(pl.Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer):  # before the module's own check
        if trainer.global_rank == 1 and trainer.global_step == 3:
            module._loss = torch.tensor(float("nan"))


build = run.build_trainer
run.build_trainer = lambda spec, folder=None, callbacks=(), **kw: build(spec, folder, [*callbacks, NaNOnRank1()], **kw)

if __name__ == "__main__":
    from cnnlab.cli import main

    sys.argv = ["cnnlab", *sys.argv[1:]]
    main()
