"""`ModelWeights`, and assembling it from a reader's tensors: shape checks, tokenizer, alignment
heads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dims import ModelDimensions
from .errors import CorruptWeightsError
from .files import read_json
from .openai_schema import expected_shapes, sinusoids
from .registry import openai_alignment_heads


@dataclass
class ModelWeights:
    """Dims plus a {openai-whisper state_dict name: float32 array} dict, and what was found
    beside them."""

    name: str  # "tiny.en", "base" or the path given
    dims: ModelDimensions
    params: dict[str, np.ndarray]  # openai-whisper state_dict names, float32, C-contiguous
    tokenizer_path: Path | None  # tokenizer.json beside the weights, if present
    alignment_heads: np.ndarray | None  # int [k, 2] rows of (text layer, head), if known
    source_format: str  # "ctranslate2" | "openai" | "safetensors"


def assemble(
    name: str,
    params: dict[str, np.ndarray],
    dims: ModelDimensions,
    source_format: str,
    folder: Path,
) -> ModelWeights:
    """Check `params` against `dims` (dropping extras), add what files may leave out, find the
    tokenizer and alignment heads beside the weights."""
    if "encoder.positional_embedding" not in params:
        params["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    shapes = expected_shapes(dims)
    missing = [k for k in shapes if k not in params]
    if missing:
        raise CorruptWeightsError(
            f"{len(missing)} tensors are missing (e.g. '{missing[0]}'): "
            "not a complete Whisper model"
        )
    for key, shape in shapes.items():
        if params[key].shape != shape:
            raise CorruptWeightsError(
                f"tensor '{key}' has shape {params[key].shape}, expected {shape} for {dims}"
            )
    tokenizer = folder / "tokenizer.json"
    return ModelWeights(
        name=name,
        dims=dims,
        params={k: params[k] for k in shapes},
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        alignment_heads=_alignment_heads(folder, dims),
        source_format=source_format,
    )


def _alignment_heads(folder: Path, dims: ModelDimensions) -> np.ndarray | None:
    """(layer, head) pairs: openai-whisper's for the models it publishes (by shape), else those of
    config.json (CTranslate2) or generation_config.json (Hugging Face); a malformed list is an
    error either way."""
    listed = _listed_alignment_heads(folder, dims)
    known = openai_alignment_heads(dims.n_vocab, dims.n_text_layer, dims.n_text_state)
    return np.asarray(known, dtype=np.int64) if known is not None else listed


def _listed_alignment_heads(folder: Path, dims: ModelDimensions) -> np.ndarray | None:
    for filename in ("config.json", "generation_config.json"):
        config = read_json(folder / filename) or {}
        if config.get("alignment_heads"):
            try:
                heads = np.asarray(config["alignment_heads"], dtype=np.int64)
            except (TypeError, ValueError):
                heads = np.zeros(0)
            valid = heads.ndim == 2 and heads.shape[1] == 2 and (heads >= 0).all()
            if not (valid and (heads < [dims.n_text_layer, dims.n_text_head]).all()):
                raise CorruptWeightsError(
                    f"'{folder / filename}' has invalid alignment_heads "
                    "(need [text layer, head] pairs)"
                )
            return heads
    return None
