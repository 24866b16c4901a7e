"""`cnnlab ARGS...` that sends itself a real signal (SIGINT or SIGTERM, argv[1]) while training step
argv[2] runs, as a user's Ctrl-C or a scheduler's SIGTERM would arrive; then argv[3:] are the CLI's."""
import os
import signal
import sys

import pytorch_lightning as pl

import cnnlab.engine.run as run

SIG, STEP = signal.Signals[sys.argv[1]], int(sys.argv[2])


class SignalAt(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == STEP:
            os.kill(os.getpid(), SIG)


build = run.build_trainer
run.build_trainer = lambda spec, folder=None, callbacks=(), **kw: build(spec, folder, [*callbacks, SignalAt()], **kw)

if __name__ == "__main__":
    from cnnlab.cli import main

    sys.argv = ["cnnlab", *sys.argv[3:]]
    main()
