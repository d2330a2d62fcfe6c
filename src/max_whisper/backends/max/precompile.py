"""Compile (or check the cache for) every MAX graph a model uses, ahead of the first transcription.

    python -m max_whisper.backends.max.precompile tiny.en base [--no-word-timestamps]

Each graph is compiled once per machine and kept in the on-disk cache. MAX compiles on one core, so
a precompile in the background overlaps with other work on the other core; processes never compile
the same graph twice (the cache locks each file).
"""
from __future__ import annotations

import sys
import time

import numpy as np


def precompile(model_name: str, device: str = "auto", word_timestamps: bool = True) -> float:
    from ...weights import load_model_weights
    from .backend import MaxBackend

    start = time.perf_counter()
    weights = load_model_weights(model_name)
    backend = MaxBackend(weights, device)
    if word_timestamps:  # the cross-attention scores graph is otherwise compiled on first use
        features = np.zeros((1, weights.dims.n_audio_ctx, weights.dims.n_audio_state), dtype=np.float32)
        backend.cross_attention(features, np.array([0, 1], dtype=np.int64))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    word_timestamps = "--no-word-timestamps" not in args
    names = [a for a in args if not a.startswith("--")] or ["tiny.en"]
    for name in names:
        seconds = precompile(name, word_timestamps=word_timestamps)
        print(f"max-whisper: graphs for {name} ready in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
