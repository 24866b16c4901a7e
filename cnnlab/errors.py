"""User errors: the CLI prints them as one line (or one block) and exits with code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user: a file, key or value, with what is allowed."""
