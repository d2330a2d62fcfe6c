"""Graph pieces shared by the encoder and decoder builders: weights, linear, LayerNorm, GELU, and
the decoder's cross-attention K/V projections (built by both: see encoder_graph)."""

from __future__ import annotations

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight, ops

from ...dims import LAYER_NORM_EPS, ModelDimensions
from .custom_ops import PANEL_WIDTH, panel_matmul, uses_panels


def weight(
    name: str, shape: list[int], device: DeviceRef, dtype: DType = DType.float32
) -> TensorValue:
    return Weight(name, dtype, shape, device).tensor  # type: ignore[attr-defined]


def linear(
    x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef, bias: bool = True
) -> TensorValue:
    """x @ W + b in x's dtype. Weights are stored pre-transposed [in, out] (MAX's matmul against a
    contiguous [in, out] weight is ~2x faster than against transpose(W)), or where uses_panels says
    so, in panels for our kernel (weight_layout.for_device lays them out)."""
    b = weight(f"{name}.bias", [d_out], device, x.dtype) if bias else None
    if uses_panels(device, x.dtype, d_out):
        return panel_matmul(x, panel_weight(name, d_in, d_out, device), b)
    y = x @ weight(f"{name}.weight", [d_in, d_out], device, x.dtype)
    return y if b is None else y + b


def panel_weight(name: str, d_in: int, d_out: int, device: DeviceRef) -> TensorValue:
    """A float32 [in, out] projection weight as weight_layout.to_panels lays it out."""
    return weight(f"{name}.weight", [d_out // PANEL_WIDTH, d_in, PANEL_WIDTH], device)


def norm_weights(
    name: str, d: int, device: DeviceRef, dtype: DType = DType.float32
) -> tuple[TensorValue, TensorValue]:
    """A LayerNorm's gain and bias."""
    return weight(f"{name}.weight", [d], device, dtype), weight(f"{name}.bias", [d], device, dtype)


def layer_norm(x: TensorValue, name: str, d: int, device: DeviceRef) -> TensorValue:
    return ops.layer_norm(x, *norm_weights(name, d, device, x.dtype), LAYER_NORM_EPS)


def gelu(x: TensorValue) -> TensorValue:
    return ops.gelu(x, approximate="none")  # exact erf GELU, as Whisper


def cross_kv(
    features: TensorValue, dims: ModelDimensions, device: DeviceRef, prefix: str
) -> list[TensorValue]:
    """One decoder layer's cross-attention K [A, H, hd, ctx] and V [A, H, ctx, hd] of audio
    features [A, ctx, d] (weights under `prefix`cross_attn.)."""
    d, heads, ctx = dims.n_text_state, dims.n_text_head, dims.n_audio_ctx
    hd = d // heads
    n_audio = features.shape[0]
    k = linear(features, f"{prefix}cross_attn.key", dims.n_audio_state, d, device, bias=False)
    v = linear(features, f"{prefix}cross_attn.value", dims.n_audio_state, d, device)
    return [
        ops.permute(ops.reshape(k, [n_audio, ctx, heads, hd]), [0, 2, 3, 1]),
        ops.permute(ops.reshape(v, [n_audio, ctx, heads, hd]), [0, 2, 1, 3]),
    ]
