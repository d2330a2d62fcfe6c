"""Errors every face of the project (CLI, server) reports as one line."""


class MaxWhisperError(Exception):
    """An error the user can fix, reported as one line."""


class UsageError(MaxWhisperError, ValueError):
    """A wrong option or argument given by the user."""


class DecodingError(MaxWhisperError, ValueError):
    """Decoding options that cannot go together (beam size with best-of, ...)."""
