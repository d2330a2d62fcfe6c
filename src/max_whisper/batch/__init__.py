"""Transcribe a whole corpus, resumably: `run(inputs, out_dir, ...)` and `max-whisper batch`."""

from .runner import BatchSummary, run

__all__ = ["BatchSummary", "run"]
