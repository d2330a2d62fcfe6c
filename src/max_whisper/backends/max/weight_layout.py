"""openai-whisper's parameter names -> the names and layouts the MAX graphs expect.

Linear weights are pre-transposed to [in, out]; q, k and v of self-attention are fused into one
[d, 3d] projection with the 1/sqrt(head_dim) softmax scale folded into q (openai scales q and k by
head_dim**-0.25 each; k has no bias); conv filters go to [k * in, out] (the stem's convolutions
are projections of im2col rows). Where custom_ops.uses_panels says so, for_device lays the float32
projections out in panels for our kernel.
"""

from __future__ import annotations

import math

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef

from ...dims import ModelDimensions
from .custom_ops import PANEL_WIDTH, uses_panels

Params = dict[str, np.ndarray]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def fused_qkv(p: Params, d: int, n_head: int, dtype: type) -> tuple[np.ndarray, np.ndarray, float]:
    """(W_qkv [d, 3d], b_qkv [3d], q scale) from one attention's q/k/v params (unprefixed)."""
    scale = 1.0 / math.sqrt(d // n_head)
    w = np.concatenate(
        [p["attn.query.weight"] * scale, p["attn.key.weight"], p["attn.value.weight"]]
    )
    b = np.concatenate([p["attn.query.bias"] * scale, np.zeros(d, dtype), p["attn.value.bias"]])
    return np.ascontiguousarray(w.T, dtype=dtype), np.ascontiguousarray(b, dtype=dtype), scale


def _layer(params: Params, prefix: str, dtype: type) -> Params:
    return {
        name[len(prefix) :]: np.asarray(a, dtype=dtype)
        for name, a in params.items()
        if name.startswith(prefix)
    }


# --- encoder --------------------------------------------------------------------------------------


def _conv_filter(w: np.ndarray) -> np.ndarray:
    """PyTorch [out, in, k] -> [k * in, out]: the weight of the conv as a projection of each
    position's k input rows side by side (im2col)."""
    out_channels, in_channels, width = w.shape
    return _f32(np.transpose(w, (2, 1, 0)).reshape(width * in_channels, out_channels))


def stem_registry(params: Params) -> Params:
    return {
        "conv1.weight": _conv_filter(params["encoder.conv1.weight"]),
        "conv1.bias": _f32(params["encoder.conv1.bias"]),
        "conv2.weight": _conv_filter(params["encoder.conv2.weight"]),
        "conv2.bias": _f32(params["encoder.conv2.bias"]),
        "positional_embedding": _f32(params["encoder.positional_embedding"]),
    }


def encoder_registry(dims: ModelDimensions, params: Params, float64_blocks: int = 0) -> Params:
    """The encoder graph's weights: the stem's, each block's under blocks.{i}. (float64 for the
    first `float64_blocks`, as those blocks compute), ln_post's, and the decoder's cross K/V
    projections."""
    registry = stem_registry(params)
    for i in range(dims.n_audio_layer):
        dtype = np.float64 if i < float64_blocks else np.float32
        p = _layer(params, f"encoder.blocks.{i}.", dtype)
        qkv_w, qkv_b, _ = fused_qkv(p, dims.n_audio_state, dims.n_audio_head, dtype)
        block = {"attn.qkv.weight": qkv_w, "attn.qkv.bias": qkv_b}
        block |= _linears_and_norms(p, ("attn.out", "mlp.0", "mlp.2"), ("attn_ln", "mlp_ln"))
        registry |= {
            f"blocks.{i}.{name}": np.ascontiguousarray(a, dtype=dtype) for name, a in block.items()
        }
    registry["ln_post.weight"] = _f32(params["encoder.ln_post.weight"])
    registry["ln_post.bias"] = _f32(params["encoder.ln_post.bias"])
    return registry | cross_kv_registry(dims, params, "decoder.")


def _linears_and_norms(p: Params, linears: tuple[str, ...], norms: tuple[str, ...]) -> Params:
    out = {}
    for name in linears:
        out[f"{name}.weight"], out[f"{name}.bias"] = (
            np.ascontiguousarray(p[f"{name}.weight"].T),
            p[f"{name}.bias"],
        )
    for name in norms:
        out[f"{name}.weight"], out[f"{name}.bias"] = p[f"{name}.weight"], p[f"{name}.bias"]
    return out


# --- decoder --------------------------------------------------------------------------------------


def decoder_block_registry(
    dims: ModelDimensions, params: Params, layer: int, prefix: str = ""
) -> Params:
    p = _layer(params, f"decoder.blocks.{layer}.", np.float32)
    qkv_w, qkv_b, scale = fused_qkv(p, dims.n_text_state, dims.n_text_head, np.float32)
    registry = {
        "attn.qkv.weight": qkv_w,
        "attn.qkv.bias": qkv_b,
        "cross_attn.query.weight": _f32((p["cross_attn.query.weight"] * scale).T),
        "cross_attn.query.bias": _f32(p["cross_attn.query.bias"] * scale),
    }
    registry |= _linears_and_norms(
        p, ("attn.out", "cross_attn.out", "mlp.0", "mlp.2"), ("attn_ln", "cross_attn_ln", "mlp_ln")
    )
    return {prefix + name: _f32(a) for name, a in registry.items()}


def cross_kv_registry(dims: ModelDimensions, params: Params, prefix: str = "") -> Params:
    """Every decoder layer's cross-attention key and value projections (the cross K/V graph's,
    and with prefix "decoder." the encoder graph's)."""
    registry = {}
    for i in range(dims.n_text_layer):
        src, dst = f"decoder.blocks.{i}.cross_attn.", f"{prefix}blocks.{i}.cross_attn."
        registry[dst + "key.weight"] = _f32(params[src + "key.weight"].T)
        registry[dst + "value.weight"] = _f32(params[src + "value.weight"].T)
        registry[dst + "value.bias"] = _f32(params[src + "value.bias"])
    return registry


def to_panels(w: np.ndarray) -> np.ndarray:
    """[in, out] -> [out / PANEL_WIDTH, in, PANEL_WIDTH]: panel_matmul's layout, a panel's rows
    contiguous."""
    d_in, d_out = w.shape
    panels = w.reshape(d_in, d_out // PANEL_WIDTH, PANEL_WIDTH)
    return np.ascontiguousarray(panels.transpose(1, 0, 2))


def for_device(registry: Params, device: DeviceRef) -> Params:
    """The registry with each projection weight (a 2-D `*.weight`, [in, out]) in panels where the
    graphs built for `device` send that projection through panel_matmul (custom_ops.uses_panels)."""
    return {
        name: to_panels(a)
        if name.endswith(".weight")
        and a.ndim == 2
        and uses_panels(device, DType.from_numpy(a.dtype), a.shape[1])
        else a
        for name, a in registry.items()
    }


def exact_in_float16(a: np.ndarray) -> bool:
    """Whether every value survives float16 (weights shipped in float16 do): then a float16 copy
    computes exactly what the float32 one does."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(np.float16).astype(a.dtype), a))


# the few-rows step's float16 projections, each with the source weights it is made of (rows in turn)
HALF_LINEAR_SOURCES = {
    "attn.qkv": ("attn.query", "attn.key", "attn.value"),
    "attn.out": ("attn.out",),
    "cross_attn.query": ("cross_attn.query",),
    "cross_attn.out": ("cross_attn.out",),
    "mlp.0": ("mlp.0",),
    "mlp.2": ("mlp.2",),
}


def half_linear_weights(params: Params, layer: int) -> Params:
    """One decoder layer's projections as float16 [out, in] (PyTorch's layout) for the few-rows
    step, q's softmax scale not folded in (the graph scales q after the projection: a float16
    weight times 1/sqrt(head_dim) can fall below float16's normal range and lose bits)."""
    p = _layer(params, f"decoder.blocks.{layer}.", np.float32)
    return {
        f"{name}.weight_half": np.ascontiguousarray(
            np.concatenate([p[f"{source}.weight"] for source in sources]), np.float16
        )
        for name, sources in HALF_LINEAR_SOURCES.items()
    }


def float16_exact(dims: ModelDimensions, params: Params) -> bool:
    """Whether the decoder's float16 copies (token embedding, layer projections) hold exactly the
    float32 weights: true for weights shipped in float16."""
    return exact_in_float16(params["decoder.token_embedding.weight"]) and all(
        exact_in_float16(params[f"decoder.blocks.{i}.{source}.weight"])
        for i in range(dims.n_text_layer)
        for sources in HALF_LINEAR_SOURCES.values()
        for source in sources
    )


def step_registry(dims: ModelDimensions, params: Params, half: bool = False) -> Params:
    """The step graphs' weights; half: also float16 copies (exact only where float16_exact) of
    the token embedding [vocab, d] for the output projection and of each layer's projections,
    else the output projection as a float32 [d, vocab] copy."""
    embedding = params["decoder.token_embedding.weight"]
    registry = {
        "token_embedding": _f32(embedding),
        "positional_embedding": _f32(params["decoder.positional_embedding"]),
        "ln.weight": _f32(params["decoder.ln.weight"]),
        "ln.bias": _f32(params["decoder.ln.bias"]),
    }
    if half:
        registry["token_embedding_half"] = np.ascontiguousarray(embedding, dtype=np.float16)
    else:
        registry["token_embedding_t"] = _f32(embedding.T)
    for i in range(dims.n_text_layer):
        registry |= decoder_block_registry(dims, params, i, prefix=f"blocks.{i}.")
        if half:
            registry |= {
                f"blocks.{i}.{name}": a for name, a in half_linear_weights(params, i).items()
            }
    return registry
