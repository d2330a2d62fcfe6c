"""Whisper's audio encoder as MAX graphs (float32 in and out).

Three graphs, each compiled once per dims and cached on disk (compile_cache):
  - the stem: conv1 + GELU, conv2 (stride 2) + GELU, + positional embedding;
  - one residual block, loaded once per layer with that layer's weights, in a float64 variant for
    the first FLOAT64_BLOCKS layers and a float32 one for the rest. It also returns ln_post of its
    output, so the last layer's second output is the encoder's result, and every layer's first
    output is a free intermediate for comparing backends.
A whole-encoder graph compiles in about the same time as stem + block (MAX dedups the identical
layers) and runs no faster, so the split costs nothing and keeps the block reusable.
Weights are graph `Weight`s fed through the weights registry, so one compiled graph serves every
model with the same dims (tiny and tiny.en share these graphs).

Accuracy. The first blocks amplify rounding: any float32 evaluation of Whisper's encoder lands a few
1e-4 from the exact (float64) result in its own direction, depending on the CPU's kernels, while the
tokens stay those of the reference. The encoder therefore computes in float32; `float64_blocks=N`
computes the first N blocks in float64 (float32 in and out) for features nearer the exact result,
at about twice each such block's cost and one more graph to compile.
"""
from __future__ import annotations

import math

import numpy as np
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, TensorValue, Weight, ops

from ...dims import ModelDimensions
from .compile_cache import compiled_graph
from .device import select_device

ENCODER_GRAPH_VERSION = 4  # bump when these graphs change: it is part of their cache key
LN_EPS = 1e-5
N_AUDIO = "n_audio"  # symbolic batch dimension: one compiled graph serves any batch size
FLOAT64_BLOCKS = 0  # leading blocks computed in float64 by default (see Accuracy above)


def _weight(name: str, shape: list[int], device: DeviceRef, dtype: DType = DType.float32) -> TensorValue:
    return Weight(name, dtype, shape, device).tensor  # type: ignore[attr-defined]


def _linear(x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef) -> TensorValue:
    # Weights are stored pre-transposed [in, out]: MAX's matmul is ~2x faster than against transpose(W).
    weight = _weight(f"{name}.weight", [d_in, d_out], device, x.dtype)
    return x @ weight + _weight(f"{name}.bias", [d_out], device, x.dtype)


def _layer_norm(x: TensorValue, name: str, d: int, device: DeviceRef) -> TensorValue:
    gamma, beta = _weight(f"{name}.weight", [d], device, x.dtype), _weight(f"{name}.bias", [d], device, x.dtype)
    return ops.layer_norm(x, gamma, beta, LN_EPS)


def _gelu(x: TensorValue) -> TensorValue:
    return ops.gelu(x, approximate="none")  # exact erf GELU, as Whisper


def _conv_k3(x: TensorValue, name: str, c_in: int, c_out: int, stride: int, device: DeviceRef) -> TensorValue:
    """1-D conv, kernel 3, padding 1, on [B, T, C] (channels last): conv2d over a height-1 image."""
    w = _weight(f"{name}.weight", [1, 3, c_in, c_out], device)  # RSCF layout
    y = ops.conv2d(ops.unsqueeze(x, 1), w, stride=(1, stride), padding=(0, 0, 1, 1),
                   bias=_weight(f"{name}.bias", [c_out], device))
    return ops.squeeze(y, 1)


def _stem(mel: TensorValue, dims: ModelDimensions, device: DeviceRef) -> TensorValue:
    d = dims.n_audio_state
    x = ops.permute(mel, [0, 2, 1])  # [B, 3000, n_mels]
    x = _gelu(_conv_k3(x, "conv1", dims.n_mels, d, 1, device))
    x = _gelu(_conv_k3(x, "conv2", d, d, 2, device))
    return x + _weight("positional_embedding", [dims.n_audio_ctx, d], device)


def _residual_block(x: TensorValue, dims: ModelDimensions, device: DeviceRef) -> TensorValue:
    d, heads = dims.n_audio_state, dims.n_audio_head
    hd = d // heads
    batch, ctx = x.shape[0], x.shape[1]

    # One fused [d, 3d] projection; the key bias is zero and the query weights carry the 1/sqrt(hd)
    # softmax scale (see block_registry).
    qkv = _linear(_layer_norm(x, "attn_ln", d, device), "attn.qkv", d, 3 * d, device)
    qkv = ops.permute(ops.reshape(qkv, [batch, ctx, 3, heads, hd]), [2, 0, 3, 1, 4])  # [3, B, H, T, hd]
    q, k_t, v = qkv[0], ops.permute(qkv[1], [0, 1, 3, 2]), qkv[2]
    attn = ops.softmax(q @ k_t) @ v  # MAX fuses this pattern: keep it whole (2x faster than pieces)
    attn = ops.reshape(ops.permute(attn, [0, 2, 1, 3]), [batch, ctx, d])
    x = x + _linear(attn, "attn.out", d, d, device)

    h = _gelu(_linear(_layer_norm(x, "mlp_ln", d, device), "mlp.0", d, 4 * d, device))
    return x + _linear(h, "mlp.2", 4 * d, d, device)


def build_stem_graph(dims: ModelDimensions, device: DeviceRef) -> Graph:
    mel_type = TensorType(DType.float32, [N_AUDIO, dims.n_mels, 2 * dims.n_audio_ctx], device=device)
    with Graph("whisper_encoder_stem", input_types=[mel_type]) as graph:
        graph.output(_stem(graph.inputs[0].tensor, dims, device))
    return graph


def build_block_graph(dims: ModelDimensions, device: DeviceRef, dtype: DType = DType.float32) -> Graph:
    """One residual block computed in `dtype`, float32 in and out; outputs (block output, ln_post(it))."""
    x_type = TensorType(DType.float32, [N_AUDIO, dims.n_audio_ctx, dims.n_audio_state], device=device)
    with Graph(f"whisper_encoder_block_{dtype.name}", input_types=[x_type]) as graph:
        x = _residual_block(ops.cast(graph.inputs[0].tensor, dtype), dims, device)
        features = _layer_norm(x, "ln_post", dims.n_audio_state, device)
        graph.output(ops.cast(x, DType.float32), ops.cast(features, DType.float32))
    return graph


# --- weights: openai-whisper names -> registry arrays laid out for these graphs ---------------------


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _conv_filter(w: np.ndarray) -> np.ndarray:
    """PyTorch [out, in, k] -> RSCF [1, k, in, out]."""
    return _f32(np.transpose(w, (2, 1, 0))[None])


def stem_registry(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "conv1.weight": _conv_filter(params["encoder.conv1.weight"]),
        "conv1.bias": _f32(params["encoder.conv1.bias"]),
        "conv2.weight": _conv_filter(params["encoder.conv2.weight"]),
        "conv2.bias": _f32(params["encoder.conv2.bias"]),
        "positional_embedding": _f32(params["encoder.positional_embedding"]),
    }


def block_registry(dims: ModelDimensions, params: dict[str, np.ndarray], layer: int,
                   dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Layer `layer`'s weights plus ln_post, as the block graph names them, as `dtype` arrays."""
    p = {name[len(f"encoder.blocks.{layer}.") :]: np.asarray(a, dtype=dtype)
         for name, a in params.items() if name.startswith(f"encoder.blocks.{layer}.")}
    d = dims.n_audio_state
    scale = 1.0 / math.sqrt(d // dims.n_audio_head)  # openai scales q and k by hd**-0.25 each
    qkv_w = np.concatenate([p["attn.query.weight"] * scale, p["attn.key.weight"], p["attn.value.weight"]])
    qkv_b = np.concatenate([p["attn.query.bias"] * scale, np.zeros(d, dtype), p["attn.value.bias"]])
    registry = {
        "attn_ln.weight": p["attn_ln.weight"], "attn_ln.bias": p["attn_ln.bias"],
        "attn.qkv.weight": qkv_w.T, "attn.qkv.bias": qkv_b,
        "attn.out.weight": p["attn.out.weight"].T, "attn.out.bias": p["attn.out.bias"],
        "mlp_ln.weight": p["mlp_ln.weight"], "mlp_ln.bias": p["mlp_ln.bias"],
        "mlp.0.weight": p["mlp.0.weight"].T, "mlp.0.bias": p["mlp.0.bias"],
        "mlp.2.weight": p["mlp.2.weight"].T, "mlp.2.bias": p["mlp.2.bias"],
        "ln_post.weight": params["encoder.ln_post.weight"], "ln_post.bias": params["encoder.ln_post.bias"],
    }
    return {name: np.ascontiguousarray(a, dtype=dtype) for name, a in registry.items()}


# --- the public class --------------------------------------------------------------------------------


class MaxEncoder:
    """mel [n_audio, n_mels, 3000] float32 -> audio features [n_audio, n_audio_ctx, d] float32."""

    def __init__(self, dims: ModelDimensions, params: dict[str, np.ndarray], device: str = "auto",
                 float64_blocks: int = FLOAT64_BLOCKS):
        self.dims = dims
        self._device, device_ref, self.device = select_device(device)
        self._session = InferenceSession(devices=[self._device])
        self._registries: list[dict] = []  # MAX reads host arrays in place: they must outlive the models
        d, heads = dims.n_audio_state, dims.n_audio_head
        signature = {"version": ENCODER_GRAPH_VERSION, "dtype": "float32", "n_mels": dims.n_mels,
                     "n_audio_ctx": dims.n_audio_ctx, "n_audio_state": d}
        stem, stem_s = compiled_graph(
            self._session, lambda: build_stem_graph(dims, device_ref), {"graph": "encoder_stem", **signature},
            label=f"encoder stem (d={d})", estimate_s=45,
        )
        self.compile_seconds = stem_s  # 0.0 when every graph came from the cache
        self._stem = self._session.init(stem, weights_registry=self._on_device(stem_registry(params)))
        self._blocks = []
        self.stage_dtypes = {"stem": "float32", "ln_post": "float32"}  # what each stage computes in
        for i in range(dims.n_audio_layer):
            dtype = DType.float64 if i < float64_blocks else DType.float32
            self.stage_dtypes[f"block.{i}"] = dtype.name
            if i in (0, float64_blocks):  # each variant's graph: compiled or loaded at its first layer
                block, block_s = compiled_graph(
                    self._session, lambda: build_block_graph(dims, device_ref, dtype),
                    {**signature, "graph": "encoder_block", "n_audio_head": heads, "dtype": dtype.name},
                    label=f"encoder block (d={d}, {heads} heads, {dtype.name})", estimate_s=90,
                )
                self.compile_seconds += block_s
            registry = block_registry(dims, params, i, dtype.to_numpy())
            self._blocks.append(self._session.init(block, weights_registry=self._on_device(registry)))

    def _on_device(self, registry: dict[str, np.ndarray]) -> dict:
        self._registries.append(registry)
        if self._device.is_host:
            return registry
        return {name: Buffer.from_numpy(a).to(self._device) for name, a in registry.items()}

    def _input(self, mel: np.ndarray) -> Buffer:
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or mel.shape[1:] != expected:
            raise ValueError(f"mel must be [n_audio, {expected[0]}, {expected[1]}], got {list(mel.shape)}")
        buffer = Buffer.from_numpy(mel)
        return buffer if self._device.is_host else buffer.to(self._device)

    def _to_numpy(self, buffer: Buffer) -> np.ndarray:
        return (buffer if self._device.is_host else buffer.to(CPU())).to_numpy()

    def _run(self, mel: np.ndarray) -> list[tuple[str, Buffer]]:
        x = self._stem.execute(self._input(mel))[0]
        steps = [("stem", x)]
        for i, block in enumerate(self._blocks):
            x, features = block.execute(x)
            steps.append((f"block.{i}", x))
        return steps + [("ln_post", features)]

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._run(mel)[-1][1])

    def run_with_intermediates(self, mel: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """[("stem", ...), ("block.0", ...), ..., ("ln_post", final features)], all [n_audio, n_audio_ctx, d]."""
        return [(name, self._to_numpy(buffer)) for name, buffer in self._run(mel)]
