"""Whisper's audio encoder as MAX graphs (float32 in and out): pure builders.

One graph: the stem (conv1 + GELU, conv2 stride 2 + GELU, + positional embedding), the residual
blocks (layer i's weights under blocks.{i}.; the first `float64_blocks` compute in float64, float32
in and out) and ln_post. It returns the features, every decoder layer's cross-attention K and V of
them (weights under decoder.blocks.{i}.: in this graph they cost less than in a graph of their
own, which the decoder keeps for other features) and every stage's output (free: each is computed
anyway), the intermediates `compare` reports. One compile for the whole encoder costs about what the
stem and one block cost apart (MAX compiles identical layers once).
Weights are graph `Weight`s fed through the weights registry (weight_layout), so one compiled graph
serves every model with the same dims (tiny and tiny.en share it).
"""

from __future__ import annotations

from max.dtype import DType
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue, ops

from ...dims import ModelDimensions
from .custom_ops import kernel_library, panel_conv3, self_attention, uses_panels
from .layers import cross_kv, gelu, layer_norm, linear, panel_weight, weight

N_AUDIO = "n_audio"  # symbolic batch dimension: one compiled graph serves any batch size


def _conv_k3(
    x: TensorValue, name: str, c_in: int, c_out: int, stride: int, device: DeviceRef
) -> TensorValue:
    """1-D conv, kernel 3, padding 1, on [B, T, C] (channels last) as one projection: each output
    position's three input rows side by side [B, T_out, 3C] (im2col) times the filter as a
    [3C, c_out] weight; through our panel kernel, the rows read in place. MAX's conv2d over a
    height-1 image computes the same sums several times more slowly."""
    if uses_panels(device, x.dtype, c_out):
        w = panel_weight(name, 3 * c_in, c_out, device)
        return panel_conv3(x, w, weight(f"{name}.bias", [c_out], device), stride)
    t_out = (int(x.shape[1]) - 1) // stride + 1
    padded = ops.pad(x, [0, 0, 1, 1, 0, 0])  # a zero row before and after the time axis
    taps = [padded[:, k : k + stride * (t_out - 1) + 1 : stride, :] for k in range(3)]
    return linear(ops.concat(taps, axis=2), name, 3 * c_in, c_out, device)


def _stem(mel: TensorValue, dims: ModelDimensions, device: DeviceRef) -> TensorValue:
    d = dims.n_audio_state
    x = ops.permute(mel, [0, 2, 1])  # [B, 3000, n_mels]
    x = gelu(_conv_k3(x, "conv1", dims.n_mels, d, 1, device))
    x = gelu(_conv_k3(x, "conv2", d, d, 2, device))
    return x + weight("positional_embedding", [dims.n_audio_ctx, d], device)


def _residual_block(
    x: TensorValue, dims: ModelDimensions, device: DeviceRef, p: str
) -> TensorValue:
    d, heads = dims.n_audio_state, dims.n_audio_head

    # One fused [d, 3d] projection; the key bias is zero and the query weights carry the 1/sqrt(hd)
    # softmax scale (weight_layout.fused_qkv).
    qkv = linear(layer_norm(x, f"{p}attn_ln", d, device), f"{p}attn.qkv", d, 3 * d, device)
    attn = self_attention(qkv, heads)
    x = x + linear(attn, f"{p}attn.out", d, d, device)

    h = gelu(linear(layer_norm(x, f"{p}mlp_ln", d, device), f"{p}mlp.0", d, 4 * d, device))
    return x + linear(h, f"{p}mlp.2", 4 * d, d, device)


def graph_name(float64_blocks: int = 0) -> str:
    return f"whisper_encoder_f64x{float64_blocks}"


def build_encoder_graph(
    dims: ModelDimensions,
    device: DeviceRef,
    float64_blocks: int = 0,
    module: Module | None = None,
) -> Graph:
    """mel [A, n_mels, 3000] -> (features, cross K_0, V_0, ..., K_L-1, V_L-1, stem output,
    block 0 output, ..., block N-1 output)."""
    mel_type = TensorType(
        DType.float32, [N_AUDIO, dims.n_mels, 2 * dims.n_audio_ctx], device=device
    )
    extensions = [kernel_library()] if device.is_cpu() else []
    with Graph(
        graph_name(float64_blocks),
        input_types=[mel_type],
        module=module,
        custom_extensions=extensions,
    ) as graph:
        x = _stem(graph.inputs[0].tensor, dims, device)
        stages = [x]
        for i in range(dims.n_audio_layer):
            dtype = DType.float64 if i < float64_blocks else DType.float32
            x = ops.cast(
                _residual_block(ops.cast(x, dtype), dims, device, f"blocks.{i}."), DType.float32
            )
            stages.append(x)
        features = layer_norm(x, "ln_post", dims.n_audio_state, device)
        cross = [
            kv
            for i in range(dims.n_text_layer)
            for kv in cross_kv(features, dims, device, f"decoder.blocks.{i}.")
        ]
        graph.output(features, *cross, *stages)
    return graph


def build_encoder_module(
    dims: ModelDimensions, device: DeviceRef, float64_blocks: int = 0
) -> Module:
    """The encoder graph in a module of its own: compiled as a module, it takes our kernels from
    the session (MaxRuntime), as the decoder's module does. A graph compiled alone registers its own
    copy of them as well, and a second such compile in one session fails."""
    module = Module()
    build_encoder_graph(dims, device, float64_blocks, module=module)
    return module
