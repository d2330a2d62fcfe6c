"""Backends: each supplies `encode(mel)` and a decoder session; see base.py."""

from __future__ import annotations

import sys

from ..errors import MaxWhisperError
from ..weights import ModelWeights

BACKENDS = ("max", "hybrid", "reference")
DEFAULT_BACKEND = "max"  # exact to the reference, and needs no PyTorch
DEVICES = ("auto", "cpu", "gpu")  # auto: the GPU where MAX (or PyTorch, for reference) sees one
DEVICE_ALIASES = {"cuda": "gpu"}  # openai-whisper's name for it


class UnknownBackend(MaxWhisperError, ValueError):
    pass


def normalize_device(device: str) -> str:
    """ "auto", "cpu" or "gpu" (also accepts "cuda"); anything else is an UnknownBackend error."""
    device = DEVICE_ALIASES.get(device.lower(), device.lower())
    if device not in DEVICES:
        raise UnknownBackend(
            f"unknown device '{device}' (choose from {', '.join(DEVICES)}, or cuda)"
        )
    return device


def create_backend(
    name: str,
    weights: ModelWeights,
    device: str = "auto",
    encoder_float64_blocks: int = 0,
    warm_start: bool = False,
):
    """`encoder_float64_blocks`: leading MAX encoder blocks computed in float64 (max and hybrid).

    warm_start (max only): on a machine that has not compiled this model's MAX graphs yet, compile
    them in a background process and return the NumPy implementation of the same network for now,
    instead of waiting minutes for the compile.
    """
    device = normalize_device(device)
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend(weights, device)
    if name == "hybrid":
        from .hybrid import HybridBackend

        return HybridBackend(weights, device, encoder_float64_blocks)
    if name == "max":
        from .max import MaxBackend

        if (
            warm_start
            and (backend := _numpy_while_compiling(weights, device, encoder_float64_blocks))
            is not None
        ):
            return backend
        return MaxBackend(weights, device, encoder_float64_blocks)
    raise UnknownBackend(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")


def _numpy_while_compiling(weights: ModelWeights, device: str, float64_blocks: int):
    from .max.warmup import jobs_for, missing, start_background

    jobs = jobs_for(weights.dims, float64_blocks, device)
    if not missing(jobs):
        return None
    from .numpy_backend import NumpyBackend

    log = start_background(jobs)
    where = f" (log: {log})" if log else " (already under way)"
    print(
        "max-whisper: this machine has not compiled the MAX graphs for this model yet: "
        f"compiling them in the background{where}; this run uses the NumPy implementation of the "
        "same network, later runs use MAX",
        file=sys.stderr,
        flush=True,
    )
    return NumpyBackend(weights, blas_threads=1)  # the compile has the other cores
