"""Which audio a command runs on: files, folders of audio files, and `-` for standard input."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .errors import UsageError

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".mp4",
        ".aac",
        ".webm",
        ".mkv",
        ".mov",
        ".wma",
        ".aiff",
        ".aif",
    }
)
STDIN = "-"


def audio_files_in(folder: str | os.PathLike) -> list[str]:
    """Every audio file below `folder` (by extension), in path order."""
    return sorted(
        os.fspath(p)
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )


def expand_inputs(items: list[str]) -> list[str]:
    """Files as given, folders replaced by the audio files inside them, `-` kept (standard input).
    A folder without audio files is a UsageError; a missing file stays, for its run to report."""
    paths: list[str] = []
    for item in items:
        if item != STDIN and os.path.isdir(item):
            found = audio_files_in(item)
            if not found:
                raise UsageError(
                    f"'{item}' is a directory with no audio files in it "
                    f"({', '.join(sorted(AUDIO_EXTENSIONS))})"
                )
            paths += found
        else:
            paths.append(item)
    if paths.count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given once")
    return paths


def missing_input(path: str) -> str | None:
    """Why `path` cannot be read (one line), or None."""
    if path == STDIN:
        return "standard input is a terminal: pipe audio into it" if sys.stdin.isatty() else None
    if not os.path.exists(path):
        return f"no such file: {path}"
    if not os.path.isfile(path):
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"permission denied: {path}"
    return None


def stdin_to_file(folder: str) -> str:
    """Standard input's bytes, spooled to a file in `folder` (the decoder needs to seek)."""
    fd, path = tempfile.mkstemp(prefix="stdin-", dir=folder)
    with os.fdopen(fd, "wb") as out:
        while chunk := sys.stdin.buffer.read(1 << 20):
            out.write(chunk)
    return path
