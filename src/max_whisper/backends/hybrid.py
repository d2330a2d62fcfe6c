"""MAX encoder + openai-whisper's PyTorch decoder: the original prototype's design, now exact."""

from __future__ import annotations

import numpy as np

from ..weights import ModelWeights
from .reference import ReferenceBackend


class HybridBackend(ReferenceBackend):
    name = "hybrid"

    def __init__(
        self, weights: ModelWeights, device: str = "auto", encoder_float64_blocks: int = 0
    ):
        from .max.encoder import MaxEncoder

        super().__init__(weights, device)
        self.encoder = MaxEncoder(
            weights.dims, weights.params, device=device, float64_blocks=encoder_float64_blocks
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        # the graph also gives MAX's cross-attention K/V, which PyTorch's decoder does not use
        return self.encoder(np.ascontiguousarray(mel, dtype=np.float32))
