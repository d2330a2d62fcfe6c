"""The MAX encoder at run time: the encoder graph (encoder_graph) bound to one model's weights.

mel [n_audio, n_mels, 3000] float32 -> audio features [n_audio, n_audio_ctx, d] float32, and with
them the decoder's cross-attention K/V (`features_and_cross_kv`), left on the device.

Accuracy. The first blocks amplify rounding: any float32 evaluation of Whisper's encoder lands a few
1e-4 from the exact (float64) result in its own direction, depending on the CPU's kernels, while the
tokens stay those of the reference. The encoder therefore computes in float32; `float64_blocks=N`
computes the first N blocks in float64 (float32 in and out) for features nearer the exact result,
at about twice each such block's cost and a second graph to compile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from max.driver import Buffer

from ...dims import ModelDimensions
from . import custom_ops, encoder_graph, layers, weight_layout
from .buffers import DeviceBuffers, to_numpy
from .compile_cache import compiled_graph, source_hash
from .device import MaxRuntime

FLOAT64_BLOCKS = 0  # leading blocks computed in float64 by default (see Accuracy above)
GRAPH_SOURCES = [
    *(Path(m.__file__) for m in (encoder_graph, layers, weight_layout)),
    *custom_ops.SOURCES,
]
# a cold compile, shown before it starts: on a 2-core CPU; for a GPU on its (16-core) host
ENCODER_COMPILE_ESTIMATE_S = {"cpu": 150, "gpu": 130}


def encoder_signature(dims: ModelDimensions, float64_blocks: int = 0) -> dict:
    """What the compiled encoder graph depends on besides MAX, device and CPU
    (never weight values)."""
    return {
        "graph": "encoder",
        "code": source_hash(*GRAPH_SOURCES),
        "float64_blocks": float64_blocks,
        "n_mels": dims.n_mels,
        "n_audio_ctx": dims.n_audio_ctx,
        "n_audio_state": dims.n_audio_state,
        "n_audio_head": dims.n_audio_head,
        "n_audio_layer": dims.n_audio_layer,
        "n_text_state": dims.n_text_state,  # the cross K/V
        "n_text_head": dims.n_text_head,
        "n_text_layer": dims.n_text_layer,
    }


def encoder_label(dims: ModelDimensions, float64_blocks: int = 0) -> str:
    f64 = f", {float64_blocks} float64 blocks" if float64_blocks else ""
    return f"encoder ({dims.n_audio_layer} x {dims.n_audio_state} wide{f64})"


def compiled_encoder(runtime: MaxRuntime, dims: ModelDimensions, float64_blocks: int = 0):
    """(compiled encoder graph, seconds spent compiling it: 0.0 from the cache)."""
    return compiled_graph(
        runtime.session,
        lambda: encoder_graph.build_encoder_module(dims, runtime.device_ref, float64_blocks),
        encoder_signature(dims, float64_blocks),
        encoder_label(dims, float64_blocks),
        ENCODER_COMPILE_ESTIMATE_S[runtime.label],
    )


class MaxEncoder:
    """mel [n_audio, n_mels, 3000] float32 -> audio features [n_audio, n_audio_ctx, d] float32."""

    def __init__(
        self,
        dims: ModelDimensions,
        params: dict[str, np.ndarray],
        device: str | MaxRuntime = "auto",
        float64_blocks: int = FLOAT64_BLOCKS,
    ):
        self.dims = dims
        runtime = device if isinstance(device, MaxRuntime) else MaxRuntime.create(device)
        self.device = runtime.label
        self._session = runtime.session
        self._buffers = DeviceBuffers(runtime.device)
        self.stage_dtypes = {"stem": "float32", "ln_post": "float32"}  # what each stage computes in
        for i in range(dims.n_audio_layer):
            self.stage_dtypes[f"block.{i}"] = "float64" if i < float64_blocks else "float32"
        compiled, self.compile_seconds = compiled_encoder(runtime, dims, float64_blocks)
        registry = weight_layout.for_device(
            weight_layout.encoder_registry(dims, params, float64_blocks), runtime.device_ref
        )
        models = self._session.init_all(compiled, weights_registry=self._buffers.weights(registry))
        self._model = models[encoder_graph.graph_name(float64_blocks)]

    def _input(self, mel: np.ndarray) -> Buffer:
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or mel.shape[1:] != expected:
            raise ValueError(
                f"mel must be [n_audio, {expected[0]}, {expected[1]}], got {list(mel.shape)}"
            )
        return self._buffers.to_device(mel)

    def _execute(self, mel: np.ndarray) -> tuple[Buffer, list[Buffer], list[Buffer]]:
        """(features, cross K/V [k_0, v_0, k_1, ...], stage outputs)."""
        features, *rest = self._model.execute(self._input(mel))
        n_cross = 2 * self.dims.n_text_layer
        return features, rest[:n_cross], rest[n_cross:]

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return to_numpy(self._execute(mel)[0])

    def features_and_cross_kv(self, mel: np.ndarray) -> tuple[np.ndarray, list[Buffer]]:
        """(features, every decoder layer's cross K and V on the device: what
        MaxDecoder.cross_kv computes from these features)."""
        features, cross, _ = self._execute(mel)
        return to_numpy(features), cross

    def run_with_intermediates(self, mel: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """[("stem", ...), ("block.0", ...), ..., ("ln_post", final features)],
        all [n_audio, n_audio_ctx, d]."""
        features, _, (stem, *blocks) = self._execute(mel)
        stages = [("stem", stem), *((f"block.{i}", b) for i, b in enumerate(blocks))]
        return [(name, to_numpy(buffer)) for name, buffer in [*stages, ("ln_post", features)]]
