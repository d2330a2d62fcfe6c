"""Whisper's audio encoder as MAX graphs (float32).

The encoder is split into two graphs so that compile time does not grow with the model:
  - the stem: conv1 + GELU, conv2 (stride 2) + GELU, + positional embedding;
  - one residual block, compiled once and loaded once per layer with that layer's weights.
    It also returns ln_post of its output, so the last layer's second output is the final feature.
Weights are graph `Weight`s fed through the weights registry, so one compiled graph serves
every model with the same dims (tiny and tiny.en share both graphs).
"""
from __future__ import annotations

import math

import numpy as np
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue, Weight, ops

from ...dims import ModelDimensions
from .compile_cache import compiled_graph
from .device import select_device

LN_EPS = 1e-5
N_AUDIO = "n_audio"  # symbolic batch dimension: one compiled graph serves any batch size


def _weight(name: str, shape: list[int], device: DeviceRef) -> TensorValue:
    return Weight(name, DType.float32, shape, device).tensor  # type: ignore[attr-defined]


def _conv_k3(x: TensorValue, w: TensorValue, b: TensorValue, stride: int) -> TensorValue:
    """1-D conv, kernel 3, padding 1, on [B, T, C] (channels last): conv2d over a height-1 image."""
    x = ops.unsqueeze(x, 1)  # [B, 1, T, C]
    y = ops.conv2d(x, w, stride=(1, stride), padding=(0, 0, 1, 1), bias=b)
    return ops.squeeze(y, 1)


def _stem(mel: TensorValue, dims: ModelDimensions, device: DeviceRef, prefix: str = "") -> TensorValue:
    d, n_mels = dims.n_audio_state, dims.n_mels
    x = ops.permute(mel, [0, 2, 1])  # [B, 3000, n_mels]
    conv1_w = _weight(f"{prefix}conv1.weight", [1, 3, n_mels, d], device)  # RSCF layout
    conv2_w = _weight(f"{prefix}conv2.weight", [1, 3, d, d], device)
    x = ops.gelu(_conv_k3(x, conv1_w, _weight(f"{prefix}conv1.bias", [d], device), 1), approximate="none")
    x = ops.gelu(_conv_k3(x, conv2_w, _weight(f"{prefix}conv2.bias", [d], device), 2), approximate="none")
    return x + _weight(f"{prefix}positional_embedding", [dims.n_audio_ctx, d], device)


def _layer_norm(x: TensorValue, name: str, d: int, device: DeviceRef) -> TensorValue:
    return ops.layer_norm(x, _weight(f"{name}.weight", [d], device), _weight(f"{name}.bias", [d], device), LN_EPS)


def _linear(x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef) -> TensorValue:
    # Weights are stored pre-transposed [in, out]: MAX's matmul is ~2x faster than against transpose(W).
    return x @ _weight(f"{name}.weight", [d_in, d_out], device) + _weight(f"{name}.bias", [d_out], device)


def _residual_block(x: TensorValue, dims: ModelDimensions, device: DeviceRef, prefix: str) -> TensorValue:
    d, heads = dims.n_audio_state, dims.n_audio_head
    hd = d // heads
    batch, ctx = x.shape[0], x.shape[1]

    # Self-attention. One fused [d, 3d] projection; the key bias is zero and the query weights carry
    # the 1/sqrt(hd) softmax scale (see block_registry).
    h = _layer_norm(x, f"{prefix}attn_ln", d, device)
    qkv = _linear(h, f"{prefix}attn.qkv", d, 3 * d, device)
    qkv = ops.permute(ops.reshape(qkv, [batch, ctx, 3, heads, hd]), [2, 0, 3, 1, 4])  # [3, B, H, T, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ops.softmax(q @ ops.permute(k, [0, 1, 3, 2]))
    attn = ops.reshape(ops.permute(weights @ v, [0, 2, 1, 3]), [batch, ctx, d])
    x = x + _linear(attn, f"{prefix}attn.out", d, d, device)

    h = _layer_norm(x, f"{prefix}mlp_ln", d, device)
    h = ops.gelu(_linear(h, f"{prefix}mlp.0", d, 4 * d, device), approximate="none")
    return x + _linear(h, f"{prefix}mlp.2", 4 * d, d, device)


def _input_type(dims: ModelDimensions, device: DeviceRef) -> TensorType:
    return TensorType(DType.float32, [N_AUDIO, dims.n_mels, 2 * dims.n_audio_ctx], device=device)


def _features_type(dims: ModelDimensions, device: DeviceRef) -> TensorType:
    return TensorType(DType.float32, [N_AUDIO, dims.n_audio_ctx, dims.n_audio_state], device=device)


def build_stem_graph(dims: ModelDimensions, device: DeviceRef, module: Module | None = None) -> Graph:
    with Graph("whisper_encoder_stem", input_types=[_input_type(dims, device)], module=module) as graph:
        graph.output(_stem(graph.inputs[0].tensor, dims, device))
    return graph


def build_block_graph(dims: ModelDimensions, device: DeviceRef, module: Module | None = None) -> Graph:
    """One residual block; outputs (block output, ln_post(block output))."""
    with Graph("whisper_encoder_block", input_types=[_features_type(dims, device)], module=module) as graph:
        x = _residual_block(graph.inputs[0].tensor, dims, device, "")
        graph.output(x, _layer_norm(x, "ln_post", dims.n_audio_state, device))
    return graph


def build_whole_graph(dims: ModelDimensions, device: DeviceRef) -> Graph:
    """The whole encoder in one graph (kept for the compile-time comparison in bench/)."""
    with Graph("whisper_encoder", input_types=[_input_type(dims, device)]) as graph:
        x = _stem(graph.inputs[0].tensor, dims, device)
        for i in range(dims.n_audio_layer):
            x = _residual_block(x, dims, device, f"blocks.{i}.")
        graph.output(_layer_norm(x, "ln_post", dims.n_audio_state, device))
    return graph


# --- weights: openai-whisper names -> registry arrays laid out for these graphs ---------------------


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """Whisper's encoder positional embedding (openai-whisper's `sinusoids`, in float32 NumPy)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2, dtype=np.float32))
    scaled_time = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _conv_filter(w: np.ndarray) -> np.ndarray:
    """PyTorch [out, in, k] -> RSCF [1, k, in, out]."""
    return _f32(np.transpose(w, (2, 1, 0))[None])


def stem_registry(dims: ModelDimensions, params: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    pos = params.get("encoder.positional_embedding")
    if pos is None:
        pos = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    return {
        f"{prefix}conv1.weight": _conv_filter(params["encoder.conv1.weight"]),
        f"{prefix}conv1.bias": _f32(params["encoder.conv1.bias"]),
        f"{prefix}conv2.weight": _conv_filter(params["encoder.conv2.weight"]),
        f"{prefix}conv2.bias": _f32(params["encoder.conv2.bias"]),
        f"{prefix}positional_embedding": _f32(pos),
    }


def block_registry(dims: ModelDimensions, params: dict[str, np.ndarray], layer: int, prefix: str = "") -> dict[str, np.ndarray]:
    src = f"encoder.blocks.{layer}."
    d = dims.n_audio_state
    scale = 1.0 / math.sqrt(d // dims.n_audio_head)  # openai scales q and k by hd**-0.25 each
    p = {name[len(src):]: np.asarray(a, dtype=np.float32) for name, a in params.items() if name.startswith(src)}
    qkv_w = np.concatenate([p["attn.query.weight"] * scale, p["attn.key.weight"], p["attn.value.weight"]])
    qkv_b = np.concatenate([p["attn.query.bias"] * scale, np.zeros(d, np.float32), p["attn.value.bias"]])
    registry = {"attn.qkv.weight": _f32(qkv_w.T), "attn.qkv.bias": _f32(qkv_b)}
    for name in ("attn.out", "mlp.0", "mlp.2"):
        registry[f"{name}.weight"] = _f32(p[f"{name}.weight"].T)
        registry[f"{name}.bias"] = _f32(p[f"{name}.bias"])
    for name in ("attn_ln", "mlp_ln"):
        registry[f"{name}.weight"] = _f32(p[f"{name}.weight"])
        registry[f"{name}.bias"] = _f32(p[f"{name}.bias"])
    return {prefix + name: a for name, a in registry.items()}


def ln_post_registry(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"ln_post.weight": _f32(params["encoder.ln_post.weight"]), "ln_post.bias": _f32(params["encoder.ln_post.bias"])}


def whole_registry(dims: ModelDimensions, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    registry = stem_registry(dims, params) | ln_post_registry(params)
    for i in range(dims.n_audio_layer):
        registry |= block_registry(dims, params, i, prefix=f"blocks.{i}.")
    return registry


# --- the public class --------------------------------------------------------------------------------


class MaxEncoder:
    """mel [n_audio, n_mels, 3000] float32 -> audio features [n_audio, n_audio_ctx, d] float32."""

    def __init__(self, dims: ModelDimensions, params: dict[str, np.ndarray], device: str = "auto"):
        self.dims = dims
        self._device, device_ref, self.device = select_device(device)
        self._session = InferenceSession(devices=[self._device])
        self._registries: list[dict] = []  # MAX reads host arrays in place: they must outlive the models
        shape = {"n_mels": dims.n_mels, "n_audio_ctx": dims.n_audio_ctx, "n_audio_state": dims.n_audio_state}
        stem, stem_s = compiled_graph(
            self._session,
            lambda: build_stem_graph(dims, device_ref),
            {"graph": "encoder_stem", "dtype": "float32", **shape},
            label=f"encoder stem ({dims.n_audio_state} wide)",
            estimate_s=35,
        )
        block, block_s = compiled_graph(
            self._session,
            lambda: build_block_graph(dims, device_ref),
            {"graph": "encoder_block", "dtype": "float32", "n_audio_head": dims.n_audio_head, **shape},
            label=f"encoder block ({dims.n_audio_state} wide, {dims.n_audio_head} heads)",
            estimate_s=65,
        )
        self.compile_seconds = stem_s + block_s  # 0.0 when both graphs came from the cache

        ln_post = ln_post_registry(params)
        self._stem = self._session.init(stem, weights_registry=self._on_device(stem_registry(dims, params)))
        self._blocks = [
            self._session.init(block, weights_registry=self._on_device(block_registry(dims, params, i) | ln_post))
            for i in range(dims.n_audio_layer)
        ]

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

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        x = self._stem.execute(self._input(mel))[0]
        for block in self._blocks:
            x, features = block.execute(x)
        return self._to_numpy(features)

    def run_with_intermediates(self, mel: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """[("stem", ...), ("block.0", ...), ..., ("ln_post", final features)] for comparing backends."""
        x = self._stem.execute(self._input(mel))[0]
        steps = [("stem", self._to_numpy(x).copy())]
        for i, block in enumerate(self._blocks):
            x, features = block.execute(x)
            steps.append((f"block.{i}", self._to_numpy(x).copy()))
        return steps + [("ln_post", self._to_numpy(features).copy())]
