"""User errors: the CLI prints them as one line (or one block) and exits with code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user: a file, key or value, with what is allowed."""


class Diverged(Exception):
    """Training stopped on a non-finite loss or gradient, its last finite state saved: the CLI
    prints the message and exits with code 3."""

    def __init__(self, message: str, step: int, checkpoint: str):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint
