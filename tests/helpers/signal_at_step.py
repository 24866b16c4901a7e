"""`cnnlab ARGS...` that sends itself a real signal (argv[1]: SIGINT, SIGTERM or SIGKILL) at a point
of the run (argv[2]): `step:N` while training step N runs, `val:E` during epoch E's validation, or
`test` during the test, as a user's Ctrl-C or a scheduler's signal would arrive; argv[3:] are the CLI's."""
import os
import signal
import sys

import pytorch_lightning as pl

import cnnlab.engine.finetune as finetune
import cnnlab.engine.run as run

SIG = signal.Signals[sys.argv[1]]
WHERE, _, AT = sys.argv[2].partition(":")


class SignalAt(pl.Callback):
    def __init__(self):
        self.sent = False

    def _send(self):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), SIG)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if WHERE == "step" and trainer.global_step == int(AT):
            self._send()

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if WHERE == "val" and trainer.current_epoch == int(AT) and not trainer.sanity_checking:
            self._send()

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if WHERE == "test":
            self._send()


build = run.build_trainer
for m in (run, finetune):  # train's runs and finetune's
    m.build_trainer = lambda spec, folder=None, callbacks=(), **kw: build(spec, folder, [*callbacks, SignalAt()], **kw)

if __name__ == "__main__":
    from cnnlab.cli import main

    sys.argv = ["cnnlab", *sys.argv[3:]]
    main()
