"""Reading weight files: the bytes of one file or of plain-concatenated parts, and JSON side
files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import CorruptWeightsError, WeightsError


def read_files(paths: Sequence[Path]) -> np.ndarray:
    """The concatenated bytes of `paths` (a split file is a plain concatenation) as one uint8
    array."""
    try:
        sizes = [p.stat().st_size for p in paths]
        buf = np.empty(sum(sizes), dtype=np.uint8)  # not zero-filled, unlike bytearray
        view = memoryview(buf)
        offset = 0
        for path, size in zip(paths, sizes):
            with open(path, "rb", buffering=0) as f:
                if f.readinto(view[offset : offset + size]) != size:
                    raise CorruptWeightsError(f"'{path}' changed size while being read")
            offset += size
    except OSError as exc:
        raise WeightsError(f"cannot read '{exc.filename}': {exc.strerror}") from None
    if not len(buf):
        raise CorruptWeightsError(f"'{paths[0]}' is empty")
    return buf


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptWeightsError(f"'{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptWeightsError(f"'{path}' does not hold a JSON object")
    return data
