"""`cnnlab ARGS...` that sends itself a real signal (argv[1]: SIGINT, SIGTERM or SIGKILL) at a point
of the run (argv[2]): `step:N` while training step N runs (`step:N@K`: in the K-th fit of the
process, for sweeps), `val:E` during epoch E's validation, `test` during the test, or
`call:MODULE:FUNCTION:K` as the K-th call of a function begins, as a user's Ctrl-C or a scheduler's
signal would arrive; argv[3:] are the CLI's."""
import functools
import importlib
import os
import signal
import sys

SIG = signal.Signals[sys.argv[1]]
WHERE, _, AT = sys.argv[2].partition(":")
AT, _, FIT = AT.partition("@")


def send() -> None:
    os.kill(os.getpid(), SIG)


def at_a_call(module: str, function: str, k: int) -> None:
    owner, calls = importlib.import_module(module), []
    original = getattr(owner, function)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            send()
        return original(*args, **kwargs)

    setattr(owner, function, counted)


def in_a_fit() -> None:
    """Every Trainer the engine builds (train's and finetune's) gets the callback (Lightning loads here)."""
    import pytorch_lightning as pl

    import cnnlab.engine.finetune as finetune
    import cnnlab.engine.run as run

    fits = []

    class SignalAt(pl.Callback):
        def __init__(self):
            self.sent = False

        def on_fit_start(self, trainer, module):
            fits.append(1)

        def _send(self):
            if not self.sent and len(fits) == int(FIT or 1):
                self.sent = True
                send()

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
    for m in (run, finetune):
        m.build_trainer = lambda spec, folder=None, callbacks=(), **kw: build(spec, folder, [*callbacks, SignalAt()], **kw)


if __name__ == "__main__":
    if WHERE == "call":
        module, function, k = AT.split(":")
        at_a_call(module, function, int(k))
    else:
        in_a_fit()
    from cnnlab.cli import main

    sys.argv = ["cnnlab", *sys.argv[3:]]
    main()
