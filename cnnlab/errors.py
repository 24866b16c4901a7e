"""User errors: the CLI prints them as one line (or one block) and exits with code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user: a file, key or value, with what is allowed."""


class Diverged(Exception):
    """Training stopped on a non-finite loss or gradient, its last finite state saved: the CLI
    prints the message and exits with code 3."""

    def __init__(self, message: str, step: int, checkpoint: str):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class Interrupted(Exception):
    """A run stopped on SIGINT or SIGTERM after a whole step, a checkpoint written at that step: the
    CLI prints the message (with `resume`, the command that continues it) and exits 128 + signal."""

    def __init__(self, signal_name: str, signum: int, epoch: int, step: int, checkpoint: str):
        super().__init__(f"interrupted by {signal_name} at step {step} (epoch {epoch}); checkpoint {checkpoint}")
        self.signal_name, self.signum, self.epoch, self.step, self.checkpoint = signal_name, signum, epoch, step, checkpoint
        self.resume: str | None = None

    def record(self) -> dict:
        return {"signal": self.signal_name, "epoch": self.epoch, "step": self.step, "checkpoint": self.checkpoint}
