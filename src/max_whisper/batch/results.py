"""What an engine hands back for each file."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MaxWhisperError
from .sources import BatchItem


@dataclass
class Finished:
    item: BatchItem
    result: dict | None  # {"text", "segments", "language"}; None when it failed
    error: str | None = None  # one line
    duration: float | None = None  # seconds of audio
    seconds: float = 0.0  # wall time from its audio's arrival to its result


def error_line(exc: BaseException) -> str:
    """One line for the manifest: our own errors and the OS's as they are, others with their
    type (those are bugs)."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, (MaxWhisperError, OSError)):
        return message
    return f"{type(exc).__name__}: {message}"
