"""Errors every face of the project (CLI, server) reports as one line."""


class UsageError(ValueError):
    """A wrong option or argument given by the user."""
