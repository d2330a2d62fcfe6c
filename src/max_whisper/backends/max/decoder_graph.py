"""Whisper's text decoder as MAX graphs (float32), its KV cache kept on the device: pure builders.

One module, compiled once per model shape:
  - cross K/V graph: encoder features [A, n_audio_ctx, d] -> every layer's cross-attention K and V,
    for features the encoder graph did not give them with (it computes the same ones; every
    session opened on the same features reuses them);
  - step graph: tokens [A, G, n] + positions [A, G, n] + mask [A, G, n, past + n] -> token +
    positional embedding,
    N pre-LN blocks (causal self-attention over cached + new K/V, cross-attention (on a CPU
    through our kernel: MAX's batched matmuls read K/V slowly for a few query rows), MLP), then, for
    the k positions asked for (logit_rows: the last one after a prompt; the SOT's too on a first
    call), final LayerNorm and logits from the token embedding (a float16 [vocab, d] copy through
    our own kernel on a CPU where the weights are float16, else a pre-transposed [d, vocab] one).
    The self-attention's KV cache (kv_cache) never visits the host: on a CPU each layer's K/V
    buffers are inputs the step writes its new positions into, in place (our kernels), each row
    reading its past through its history of slots; elsewhere the step takes each layer's past K/V
    and returns them concatenated with the new positions, buffers the session feeds back on the
    next call. Symbolic sizes: one compiled graph serves prefill and single-token steps, greedy
    and beam search, one window or several. Positions and mask are per row, so windows whose
    prompts differ in length decode in one batch: each row is left-padded to the longest, its
    padding masked out and its positions counted from its first real token.
  - few-rows step graph (a CPU, float16-exact weights): the same step with every projection
    through our kernel on float16 [out, in] copies. MAX's float32 GEMM on one to a few rows does
    not stream its weight at the memory's speed; a single-token step is nothing but such reads.
    The kernel also takes each LayerNorm before a projection and the residual sum after one: a
    step's small kernels cost more in their starts and ends than in their work.
  - scores graph: the step graph's variant for word timestamps, each layer's cross-attention scores
    q.k / sqrt(head_dim) before the softmax instead of logits (in the same module: it shares every
    kernel with the step graph, so it adds little to the compile).
Rows are laid out [A, G, ...]: A audio windows, G rows (beams, samples) per window; row r of the
decoding batch attends to window r // G. The G rows of a window share its cross K/V: their queries
form one [G * n, hd] matrix per head, so K/V are read once per window, not once per beam.

Layouts: weights pre-transposed to [in, out] (MAX's matmul against a contiguous [in, out] weight is
~2x faster than against transpose(W)), or in panels for our matmul where layers.linear uses it;
q, k, v fused in one [d, 3d] projection with the 1/sqrt(hd)
softmax scale folded into q (k has no bias); the residual stream is 2-D [A*G*n, d] so projections
are plain GEMMs; self K cached as [S, H, hd, capacity] and V as [S, H, capacity, hd] in place (a
CPU), or [A, G, H, hd, len] and [A, G, H, len, hd] copied; cross K as [A, H, hd, ctx], V as
[A, H, ctx, hd].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from max.dtype import DType
from max.graph import (
    BufferType,
    BufferValue,
    DeviceRef,
    Graph,
    Module,
    TensorType,
    TensorValue,
    ops,
)

from ...dims import ModelDimensions
from .custom_ops import (
    decoder_attention,
    half_projection_add,
    half_weight_matmul,
    kernel_library,
    norm_half_matmul,
    norm_half_projection,
    slot_attention,
    store_kv,
)
from .layers import cross_kv, gelu, layer_norm, linear, norm_weights, weight

N_AUDIO = "n_audio"
GROUP = "group"  # token rows per audio (beams); a batch of rows is laid out [n_audio, group, ...]
N_NEW = "n_new"  # tokens fed in this call
N_PAST = "n_past"  # cached positions
N_TOTAL = "n_total"  # n_past + n_new (the mask's width)
N_SLOTS = "n_slots"  # rows of an in-place KV cache (at least the rows of any step it serves)
CAPACITY = "capacity"  # positions an in-place KV cache holds
N_LOGITS = "n_logits"  # positions (of the n_new) whose logits are computed


class Projections(NamedTuple):
    """A block's projections, each with the neighbour it feeds from or into:
    normed(x, ln, name, d_in, d_out, device, act=False) -> linear(layer_norm(x)), GELU'd with act;
    added(residual, x, name, d_in, d_out, device) -> residual + linear(x)."""

    normed: Callable[..., TensorValue]
    added: Callable[..., TensorValue]


def _normed(
    x: TensorValue, ln: str, name: str, d_in: int, d_out: int, device: DeviceRef, act: bool = False
) -> TensorValue:
    y = linear(layer_norm(x, ln, d_in, device), name, d_in, d_out, device)
    return gelu(y) if act else y


def _added(
    residual: TensorValue, x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef
) -> TensorValue:
    return residual + linear(x, name, d_in, d_out, device)


FLOAT32 = Projections(_normed, _added)  # float32 [in, out] weights through MAX's GEMM


def _grown_cache(
    past_k: TensorValue, past_v: TensorValue, qkv: TensorValue, source: TensorValue
) -> tuple[TensorValue, TensorValue]:
    """A layer's copied KV cache (a GPU's) grown by a step's positions, in MAX's ops: past_k
    [..., H, hd, P] and past_v [..., H, P, hd] (R rows in the leading dimensions), the fused
    projection's rows qkv [R, n, 3 H hd] (q | k | v), and source [R] int64 (row r continues the
    past of row source[r]) -> K [..., H, hd, P + n], V [..., H, P + n, hd]."""
    *lead, heads, hd, _ = past_k.shape
    rows, n_new = qkv.shape[0], qkv.shape[1]
    split = ops.permute(ops.reshape(qkv, [rows, n_new, 3, heads, hd]), [2, 0, 3, 1, 4])
    new_k = ops.reshape(ops.permute(split[1], [0, 1, 3, 2]), [*lead, heads, hd, n_new])
    new_v = ops.reshape(split[2], [*lead, heads, n_new, hd])
    past_k, past_v = (
        ops.reshape(ops.gather(ops.reshape(p, [rows, *p.shape[-3:]]), source, axis=0), p.shape)
        for p in (past_k, past_v)
    )
    return ops.concat([past_k, new_k], axis=-1), ops.concat([past_v, new_v], axis=-2)


def _self_attention(
    qkv: TensorValue, mask: TensorValue, cache: tuple, n_audio, group, n_new, dims: ModelDimensions
) -> tuple[TensorValue, list[TensorValue]]:
    """Causal self-attention over the cached and the new positions: qkv [A*G, n, 3d] (q scaled),
    mask [A, G, n, past + n] -> ([A*G, n, d], the layer's grown cache: outputs of a copied cache).

    cache: (history [A, G, past + n], K, V buffers) for the in-place cache of a CPU (our kernels),
    or (cache_rows [A, G], past K [A, G, H, hd, past], past V [A, G, H, past, hd]) for the copied
    cache of a GPU (MAX's ops), returned grown."""
    d, heads = dims.n_text_state, dims.n_text_head
    hd = d // heads
    rows = n_audio * group
    order, past_k, past_v = cache
    if isinstance(past_k, BufferValue):
        n_total = order.shape[2]
        history = ops.reshape(order, [rows, n_total])
        mask = ops.reshape(
            ops.rebind(mask, [n_audio, group, n_new, n_total]), [rows, 1, n_new, n_total]
        )
        store_kv(past_k, past_v, qkv, history)
        return slot_attention(qkv, past_k, past_v, history, mask), []
    k_all, v_all = _grown_cache(past_k, past_v, qkv, ops.reshape(order, [rows]))
    n_total = k_all.shape[4]
    mask = ops.reshape(
        ops.rebind(mask, [n_audio, group, n_new, n_total]), [rows, 1, n_new, n_total]
    )
    attn = decoder_attention(
        qkv,
        ops.reshape(k_all, [rows, heads, hd, n_total]),
        ops.reshape(v_all, [rows, heads, n_total, hd]),
        mask,
    )
    return attn, [k_all, v_all]


def _block(
    x: TensorValue,
    mask: TensorValue,
    cache: tuple,
    cross_k: TensorValue,
    cross_v: TensorValue,
    dims: ModelDimensions,
    device: DeviceRef,
    prefix: str = "",
    project: Projections = FLOAT32,
    cross_scores: bool = False,
) -> tuple[TensorValue, list[TensorValue], TensorValue | None]:
    """One residual block on x [A, G, n, d]; cache: the layer's (_self_attention). Returns (x, the
    grown cache (a copied cache's; none in place), cross scores before softmax: only with
    `cross_scores`, else None). `project`: the projections (float32 [in, out] by default).

    The residual stream is kept 2-D [A*G*n, d] so every projection is one plain GEMM (batched
    matmuls would re-read the weight once per row; MAX's batched matmul also stops at rank 4).
    """
    d, heads = dims.n_text_state, dims.n_text_head
    hd = d // heads
    n_audio, group, n_new = x.shape[0], x.shape[1], x.shape[2]
    rows = n_audio * group
    x = ops.reshape(x, [rows * n_new, d])

    qkv = project.normed(x, f"{prefix}attn_ln", f"{prefix}attn.qkv", d, 3 * d, device)  # q scaled
    qkv = ops.reshape(qkv, [rows, n_new, 3 * d])
    attn, grown = _self_attention(qkv, mask, cache, n_audio, group, n_new, dims)  # [AG, n, d]
    x = project.added(x, ops.reshape(attn, [rows * n_new, d]), f"{prefix}attn.out", d, d, device)

    # cross-attention: the G rows (beams) of one audio share its K/V: one [G * n, hd] query matrix
    # per head, so K/V are read once per audio rather than once per row
    q = project.normed(
        x, f"{prefix}cross_attn_ln", f"{prefix}cross_attn.query", d, d, device
    )  # scaled by 1/sqrt(hd)
    q = ops.reshape(q, [n_audio, group * n_new, d])
    scores_out = None
    if cross_scores:  # word timestamps: the scores themselves, [A, H, G*n, ctx]
        heads_q = ops.permute(ops.reshape(q, [n_audio, group * n_new, heads, hd]), [0, 2, 1, 3])
        scores_out = heads_q @ cross_k
        attn = ops.permute(ops.softmax(scores_out) @ cross_v, [0, 2, 1, 3])
    else:
        attn = decoder_attention(q, cross_k, cross_v)  # [A, G*n, d]
    attn = ops.reshape(attn, [rows * n_new, d])
    x = project.added(x, attn, f"{prefix}cross_attn.out", d, d, device)

    h = project.normed(x, f"{prefix}mlp_ln", f"{prefix}mlp.0", d, 4 * d, device, act=True)
    x = project.added(x, h, f"{prefix}mlp.2", 4 * d, d, device)
    return ops.reshape(x, [n_audio, group, n_new, d]), grown, scores_out


def _half_projections(dims: ModelDimensions) -> Projections:
    """The projections of the few-rows step: our kernel on a float16 [out, in] weight, with the
    LayerNorm before it, or the residual sum after it, in the same kernel; q's softmax scale after
    the product (exact: a power of two for Whisper's head size), then the float32 bias (already
    scaled)."""
    d = dims.n_text_state
    scale = 1.0 / math.sqrt(d // dims.n_text_head)

    def half(name: str, d_in: int, d_out: int, device: DeviceRef) -> TensorValue:
        return weight(f"{name}.weight_half", [d_out, d_in], device, DType.float16)

    def normed(
        x: TensorValue,
        ln: str,
        name: str,
        d_in: int,
        d_out: int,
        device: DeviceRef,
        act: bool = False,
    ) -> TensorValue:
        outputs_scale = np.ones(d_out, np.float32)
        if name.endswith(("attn.qkv", "cross_attn.query")):  # q: the first d outputs
            outputs_scale[:d] = scale
        return norm_half_projection(
            x,
            norm_weights(ln, d_in, device),
            half(name, d_in, d_out, device),
            ops.constant(outputs_scale, DType.float32, device),
            weight(f"{name}.bias", [d_out], device),
            gelu=act,
        )

    def added(
        residual: TensorValue, x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef
    ) -> TensorValue:
        bias = weight(f"{name}.bias", [d_out], device)
        return half_projection_add(x, half(name, d_in, d_out, device), bias, residual)

    return Projections(normed, added)


def _embed(
    tokens: TensorValue, positions: TensorValue, dims: ModelDimensions, device: DeviceRef
) -> TensorValue:
    d = dims.n_text_state
    tok = ops.gather(
        weight("token_embedding", [dims.n_vocab, d], device), tokens, axis=0
    )  # [A, G, n, d]
    pos = ops.gather(
        weight("positional_embedding", [dims.n_text_ctx, d], device), positions, axis=0
    )  # [A, G, n, d]
    return tok + pos


def _head(
    x: TensorValue,
    logit_rows: TensorValue,
    dims: ModelDimensions,
    device: DeviceRef,
    half_head: bool,
    few_rows: bool = False,
) -> TensorValue:
    """x [A, G, n, d], logit_rows [k] (indices into n) -> logits [A, G, k, vocab]. few_rows (with
    half_head): the LayerNorm inside the product's kernel."""
    d = dims.n_text_state
    x = ops.gather(x, logit_rows, axis=2)
    n_audio, group, k = x.shape[0], x.shape[1], x.shape[2]
    x = ops.reshape(x, [n_audio * group * k, d])
    if half_head:  # the token embedding as float16 [vocab, d]: half the bytes read per step
        embedding = weight("token_embedding_half", [dims.n_vocab, d], device, DType.float16)
        if few_rows:
            logits = norm_half_matmul(x, norm_weights("ln", d, device), embedding)
        else:
            logits = half_weight_matmul(layer_norm(x, "ln", d, device), embedding)
    else:  # one GEMM against a float32 [d, vocab] copy: W read once
        x = layer_norm(x, "ln", d, device)
        logits = x @ weight("token_embedding_t", [d, dims.n_vocab], device)
    return ops.reshape(logits, [n_audio, group, k, dims.n_vocab])


# --- input types -------------------------------------------------------------------------------


def _types(dims: ModelDimensions, device: DeviceRef) -> dict[str, TensorType | BufferType]:
    d, heads, ctx = dims.n_text_state, dims.n_text_head, dims.n_audio_ctx
    hd = d // heads
    f32 = DType.float32
    return {
        "tokens": TensorType(DType.int64, [N_AUDIO, GROUP, N_NEW], device=device),
        "positions": TensorType(DType.int64, [N_AUDIO, GROUP, N_NEW], device=device),
        "logit_rows": TensorType(DType.int64, [N_LOGITS], device=device),
        "mask": TensorType(f32, [N_AUDIO, GROUP, N_NEW, N_TOTAL], device=device),
        "cache_rows": TensorType(DType.int64, [N_AUDIO, GROUP], device=device),
        "past_k": TensorType(f32, [N_AUDIO, GROUP, heads, hd, N_PAST], device=device),
        "past_v": TensorType(f32, [N_AUDIO, GROUP, heads, N_PAST, hd], device=device),
        "history": TensorType(DType.int64, [N_AUDIO, GROUP, N_TOTAL], device=device),
        "cache_k": BufferType(f32, [N_SLOTS, heads, hd, CAPACITY], device=device),
        "cache_v": BufferType(f32, [N_SLOTS, heads, CAPACITY, hd], device=device),
        "cross_k": TensorType(f32, [N_AUDIO, heads, hd, ctx], device=device),
        "cross_v": TensorType(f32, [N_AUDIO, heads, ctx, hd], device=device),
        "features": TensorType(f32, [N_AUDIO, ctx, dims.n_audio_state], device=device),
    }


def build_cross_kv_graph(
    dims: ModelDimensions, device: DeviceRef, module: Module | None = None
) -> Graph:
    """features [A, ctx, d] -> every layer's cross K [A, H, hd, ctx] and V [A, H, ctx, hd]."""
    t = _types(dims, device)
    extensions = [kernel_library()] if device.is_cpu() else []
    with Graph(
        "whisper_decoder_cross_kv_all",
        input_types=[t["features"]],
        module=module,
        custom_extensions=extensions,
    ) as graph:
        f = graph.inputs[0].tensor
        graph.output(
            *(
                out
                for i in range(dims.n_text_layer)
                for out in cross_kv(f, dims, device, f"blocks.{i}.")
            )
        )
    return graph


def cache_in_place(device: DeviceRef) -> bool:
    """Whether the step writes the KV cache in place (kv_cache.SlotCache): where our kernels run,
    on a CPU; elsewhere each step returns it grown (kv_cache.CopiedCache)."""
    return device.is_cpu()


def build_step_graph(
    dims: ModelDimensions,
    device: DeviceRef,
    scores: bool = False,
    module: Module | None = None,
    half_head: bool = False,
    half_layers: bool = False,
    in_place: bool | None = None,
) -> Graph:
    """The whole decoder step in one graph.

    Inputs: tokens [A, G, n], positions [A, G, n], logit_rows [k], mask [A, G, n, past + n], then
    the cache's order, cross_k, cross_v per layer, and the cache per layer. Outputs: logits
    [A, G, k, vocab]; or, with `scores` (no logit_rows input), each layer's cross-attention scores
    before the softmax [A, H, G*n, ctx].
    The cache: in_place (default: cache_in_place): history [A, G, past + n] (the
    slot of each row's positions, the new ones' last), then buffers K [S, H, hd, cap] and V
    [S, H, cap, hd] per layer, written in place. Otherwise copied: cache_rows [A, G] (the past row
    each row continues: beam search reorders its rows), then past K [A, G, H, hd, past] and V
    [A, G, H, past, hd] per layer; the step outputs them grown, after the logits.
    half_head: logits from a float16 copy of the token embedding through our own kernel (CPU;
    exact where the weights are float16). half_layers: the layers' projections too (the few-rows
    graph: our kernel streams a float16 weight at the memory's speed, where MAX's float32 GEMM on
    a handful of rows does not).
    """
    in_place = cache_in_place(device) if in_place is None else in_place
    t = _types(dims, device)
    n_layer = dims.n_text_layer
    types = [t["tokens"], t["positions"]] + ([] if scores else [t["logit_rows"]])
    types += [t["mask"], t["history" if in_place else "cache_rows"]]
    types += [t["cross_k"], t["cross_v"]] * n_layer
    types += (
        [t["cache_k"], t["cache_v"]] * n_layer if in_place else [t["past_k"], t["past_v"]] * n_layer
    )
    name = "whisper_decoder_scores" if scores else "whisper_decoder_step"
    name += "_rows" if half_layers else ""
    extensions = [kernel_library()] if device.is_cpu() else []
    project = _half_projections(dims) if half_layers else FLOAT32
    with Graph(name, input_types=types, module=module, custom_extensions=extensions) as graph:
        inputs = [i.buffer if isinstance(i.type, BufferType) else i.tensor for i in graph.inputs]
        tokens, positions = inputs[:2]
        logit_rows = None if scores else inputs[2]
        mask, order, *rest = inputs[3 - scores :]
        cross, cache = rest[: 2 * n_layer], rest[2 * n_layer :]
        x = _embed(tokens, positions, dims, device)
        grown, layer_scores = [], []
        for i in range(n_layer):
            x, layer_grown, s = _block(
                x,
                mask,
                (order, cache[2 * i], cache[2 * i + 1]),
                cross[2 * i],
                cross[2 * i + 1],
                dims,
                device,
                f"blocks.{i}.",
                project,
                scores,
            )
            grown += layer_grown
            layer_scores.append(s)
        if scores:
            graph.output(*layer_scores)
        else:
            graph.output(_head(x, logit_rows, dims, device, half_head, half_layers), *grown)
    return graph


def build_decoder_module(
    dims: ModelDimensions, device: DeviceRef, half: bool, in_place: bool | None = None
) -> Module:
    """The cross K/V, step and scores graphs, compiled together (one compile shares MAX's fixed cost
    of a compile and the kernels the graphs have in common); half (a CPU, float16-exact weights):
    the step's head in float16, and a second step graph for a few rows, all in float16; in_place:
    the KV cache (build_step_graph)."""
    module = Module()
    build_cross_kv_graph(dims, device, module=module)
    build_step_graph(dims, device, module=module, half_head=half, in_place=in_place)
    if half:
        build_step_graph(
            dims, device, module=module, half_head=True, half_layers=True, in_place=in_place
        )
    build_step_graph(dims, device, scores=True, module=module, in_place=in_place)
    return module
