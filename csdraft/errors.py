"""Errors a user can act on: one line, an exit code, no traceback."""

from __future__ import annotations


class CsdraftError(Exception):
    """A failure explained in one line. ``exit_code`` is 2 for usage errors, 1 for runtime ones."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CsdraftError):
    """Bad input from the user (arguments, config, prompt): exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
