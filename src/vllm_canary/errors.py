"""Errors a user can cause. They carry a message that says what to do and are rendered once,
at the edge (one line on the CLI, an OpenAI-style body over HTTP), never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input, flags or files. `exit_code` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(UserError):
    """Invalid settings: flags, environment variables or a settings file."""


class NotRunningError(UserError):
    """A command needs a running component (e.g. the local stack) that is not there."""

    exit_code = 1
