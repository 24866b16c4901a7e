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
    """A command stopped on SIGINT or SIGTERM: a fit after a whole step, a checkpoint written at that
    step (`epoch`, `step`, `checkpoint`), or another long command (`what`, what it kept). The CLI
    prints the message (with `resume`, the command that continues it) and exits 128 + signal."""

    def __init__(self, signal_name: str, signum: int, epoch: int | None = None, step: int | None = None,
                 checkpoint: str | None = None, what: str | None = None):
        if step is not None:
            message = f"interrupted by {signal_name} at step {step} (epoch {epoch}); checkpoint {checkpoint}"
        else:
            message = f"interrupted by {signal_name}" + (f" while {what}" if what else "")
        super().__init__(message)
        self.signal_name, self.signum, self.epoch, self.step, self.checkpoint = signal_name, signum, epoch, step, checkpoint
        self.resume: str | None = None
        self.partial: dict | None = None  # a command's results so far, for its table

    def record(self) -> dict:
        return {"signal": self.signal_name, "epoch": self.epoch, "step": self.step, "checkpoint": self.checkpoint}

    def kept(self, what: str) -> "Interrupted":
        """The same stop, its message saying what the command kept (one line)."""
        during = f"; the run in progress stopped at step {self.step}, checkpoint {self.checkpoint}" if self.step is not None else ""
        self.args = (f"interrupted by {self.signal_name}: {what}{during}",)
        self.resume = None
        return self
