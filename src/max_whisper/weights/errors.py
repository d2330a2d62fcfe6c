"""The errors of weight loading: weights that cannot be loaded, and files whose content is wrong."""

from __future__ import annotations

from ..errors import MaxWhisperError


class WeightsError(MaxWhisperError, ValueError):
    """The weights could not be loaded; the message is one line that says how to fix it."""


class CorruptWeightsError(WeightsError):
    """A file's content is wrong (truncated, garbage, not Whisper). The message names the problem;
    `load_model_weights` appends the fix, which depends on where the file came from."""
