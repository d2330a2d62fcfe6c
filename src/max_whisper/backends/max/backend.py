"""The MAX backend: encoder and decoder as MAX graphs; no torch, no openai-whisper on this path."""

from __future__ import annotations

import numpy as np

from ...weights import ModelWeights
from .decoder import MaxDecoder, MaxDecoderSession
from .device import MaxRuntime
from .encoder import MaxEncoder


class MaxBackend:
    """base.Backend on MAX: `encode(mel)` runs MaxEncoder, decoder sessions run MaxDecoder."""

    name = "max"
    # decoder_session(features, pad): windows with prompts of different lengths in one batch
    ragged_batches = True

    def __init__(
        self, weights: ModelWeights, device: str = "auto", encoder_float64_blocks: int = 0
    ):
        from .warmup import (
            compile_all,
            jobs_for,
        )  # here: `python -m ...warmup` imports this package first

        self.dims = weights.dims
        # graphs not compiled on this machine yet: compile them one process per core, then load
        try:
            compile_all(jobs_for(self.dims, encoder_float64_blocks, device))
        except (OSError, RuntimeError):
            # an unwritable cache or a failed compile: compiled (or reported) here, in this process
            pass
        runtime = MaxRuntime.create(device)
        self.device = runtime.label
        self.encoder = MaxEncoder(
            self.dims, weights.params, runtime, float64_blocks=encoder_float64_blocks
        )
        self.decoder = MaxDecoder(self.dims, weights.params, runtime)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim == 2:
            mel = mel[None]
        features, cross = self.encoder.features_and_cross_kv(mel)
        self.decoder.remember_cross(features, cross)  # the sessions on these features use it
        return features

    def decoder_session(
        self, audio_features: np.ndarray, pad: list[int] | None = None
    ) -> MaxDecoderSession:
        return self.decoder.new_session(self._features(audio_features), pad)

    def cross_attention(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.decoder.cross_attention_scores(
            self._features(audio_features), np.asarray(tokens)
        )

    def _features(self, audio_features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(audio_features, dtype=np.float32)
        if features.ndim == 2:
            features = features[None]
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        if features.ndim != 3 or features.shape[1:] != expected:
            raise ValueError(
                f"audio features must be [n_audio, {expected[0]}, {expected[1]}], "
                f"got {list(features.shape)}"
            )
        return features
