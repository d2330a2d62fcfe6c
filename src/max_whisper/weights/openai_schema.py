"""The openai-whisper state dict: its tensor shapes, dims read from shapes, the fixed positional
embedding."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..dims import ModelDimensions
from .errors import CorruptWeightsError


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """The encoder's fixed positional embedding: whisper.model.sinusoids in NumPy. Computed in
    float64; torch's float32 version differs by up to ~1e-4 at the far positions (arguments
    ~1500 rad)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def dims_from_params(
    params: Mapping[str, np.ndarray],
    n_audio_head: int | None = None,
    n_text_head: int | None = None,
) -> ModelDimensions:
    """Dims from the tensor shapes (openai names). Head counts are not visible in shapes: when not
    given, use Whisper's head size of 64."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            raise CorruptWeightsError(f"no tensor for '{name}': not a Whisper model")
        return params[name].shape

    def n_blocks(side: str) -> int:
        pattern = re.compile(rf"{side}\.blocks\.(\d+)\.")
        return 1 + max((int(m[1]) for m in map(pattern.match, params) if m), default=-1)

    n_audio_state, n_mels = shape("encoder.conv1.weight")[:2]
    n_vocab, n_text_state = shape("decoder.token_embedding.weight")
    if "encoder.positional_embedding" in params:
        n_audio_ctx = shape("encoder.positional_embedding")[0]
    else:  # a buffer some files leave out; Whisper always uses 1500 positions (30 s)
        n_audio_ctx = 1500
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=n_audio_ctx,
        n_audio_state=n_audio_state,
        n_audio_head=n_audio_head or n_audio_state // 64,
        n_audio_layer=n_blocks("encoder"),
        n_vocab=n_vocab,
        n_text_ctx=shape("decoder.positional_embedding")[0],
        n_text_state=n_text_state,
        n_text_head=n_text_head or n_text_state // 64,
        n_text_layer=n_blocks("decoder"),
    )


def expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every tensor of openai-whisper's `Whisper(dims).state_dict()` and its shape."""
    d_a, d_t = dims.n_audio_state, dims.n_text_state
    shapes = {
        "encoder.positional_embedding": (dims.n_audio_ctx, d_a),
        "encoder.conv1.weight": (d_a, dims.n_mels, 3),
        "encoder.conv1.bias": (d_a,),
        "encoder.conv2.weight": (d_a, d_a, 3),
        "encoder.conv2.bias": (d_a,),
        "encoder.ln_post.weight": (d_a,),
        "encoder.ln_post.bias": (d_a,),
        "decoder.positional_embedding": (dims.n_text_ctx, d_t),
        "decoder.token_embedding.weight": (dims.n_vocab, d_t),
        "decoder.ln.weight": (d_t,),
        "decoder.ln.bias": (d_t,),
    }
    sides = (
        ("encoder", dims.n_audio_layer, d_a, ("attn",)),
        ("decoder", dims.n_text_layer, d_t, ("attn", "cross_attn")),
    )
    for side, n_layer, d, attentions in sides:
        for i in range(n_layer):
            p = f"{side}.blocks.{i}."
            for a in attentions:
                shapes.update(
                    {
                        f"{p}{a}.query.weight": (d, d),
                        f"{p}{a}.query.bias": (d,),
                        f"{p}{a}.key.weight": (d, d),  # Whisper's key projection has no bias
                        f"{p}{a}.value.weight": (d, d),
                        f"{p}{a}.value.bias": (d,),
                        f"{p}{a}.out.weight": (d, d),
                        f"{p}{a}.out.bias": (d,),
                        f"{p}{a}_ln.weight": (d,),
                        f"{p}{a}_ln.bias": (d,),
                    }
                )
            shapes.update(
                {
                    f"{p}mlp.0.weight": (4 * d, d),
                    f"{p}mlp.0.bias": (4 * d,),
                    f"{p}mlp.2.weight": (d, 4 * d),
                    f"{p}mlp.2.bias": (d,),
                    f"{p}mlp_ln.weight": (d,),
                    f"{p}mlp_ln.bias": (d,),
                }
            )
    return shapes
