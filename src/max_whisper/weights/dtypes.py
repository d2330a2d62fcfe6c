"""Tensor dtype helpers: float32 copies that own their memory, and bfloat16 bit patterns to
float32."""

from __future__ import annotations

import numpy as np


def as_float32(value: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous copy that owns its memory (the source may be a view of a file
    buffer)."""
    return np.array(value, dtype=np.float32, order="C", copy=True)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their uint16 bit patterns (NumPy has no bfloat16) -> float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
