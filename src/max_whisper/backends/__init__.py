"""Backends: each supplies `encode(mel)` and a decoder session; see base.py."""
from __future__ import annotations

from ..weights import ModelWeights

BACKENDS = ("max", "hybrid", "reference")
DEFAULT_BACKEND = "max"  # exact to the reference, and needs no PyTorch


class UnknownBackend(ValueError):
    pass


def create_backend(name: str, weights: ModelWeights, device: str = "auto", encoder_float64_blocks: int = 0):
    """`encoder_float64_blocks`: leading MAX encoder blocks computed in float64 (max and hybrid)."""
    if device not in ("auto", "cpu", "gpu"):
        raise UnknownBackend(f"unknown device '{device}' (auto, cpu or gpu)")
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend(weights, device)
    if name == "hybrid":
        from .hybrid import HybridBackend

        return HybridBackend(weights, device, encoder_float64_blocks)
    if name == "max":
        from .max import MaxBackend

        return MaxBackend(weights, device, encoder_float64_blocks)
    raise UnknownBackend(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
