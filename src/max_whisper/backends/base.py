"""What a backend supplies: "encode mel -> features" and "decode step -> logits".

Everything else (tokenizer, decoding rules, the long-form loop, writers) is shared by all backends.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..dims import ModelDimensions
from ..tokenizer import Tokenizer


class DecoderSession(Protocol):
    """One decoding pass over a batch of audio windows; owns its KV cache.

    `audio_features` given at creation is [n_audio, n_audio_ctx, d]; the token batch may be
    n_audio * group rows (beam search): row r attends to audio r // group.
    """

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        """tokens: int [batch, T], the whole sequence so far (same T for all rows).

        The first call feeds all T tokens (prefill); later calls feed only the tokens not yet
        cached. Returns float32 logits [batch, k, n_vocab] at `positions` (indices into the
        sequence, all among the newly fed ones), or at every newly fed position when `positions`
        is None.
        """

    def rearrange(self, source_indices: list[int]) -> None:
        """Reorder (and duplicate) cache rows: row i of the new cache is row source_indices[i]."""


class Backend(Protocol):
    name: str
    dims: ModelDimensions
    device: str  # "cpu" or "gpu"

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """mel: float32 [n_audio, n_mels, 3000] -> audio features float32
        [n_audio, n_audio_ctx, d]."""

    def decoder_session(self, audio_features: np.ndarray) -> DecoderSession: ...

    def cross_attention(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Cross-attention scores for word timing, before softmax: float32
        [n_text_layer, n_text_head, T, n_audio_ctx], for one window ([1, ...] features) and one
        token row [T]. Scores are q.k / sqrt(head_dim), as Whisper's attention computes them."""


class TranscriptionModel(Protocol):
    """What the long-form loop and word timing need of a model: a backend, its tokenizer, dims and
    the alignment heads (`api.WhisperModel` is one)."""

    backend: Backend
    dims: ModelDimensions
    tokenizer: Tokenizer

    @property
    def is_multilingual(self) -> bool: ...

    @property
    def alignment_heads(self) -> np.ndarray:
        """int [k, 2]: (text layer, head) pairs whose cross-attention follows the speech."""
