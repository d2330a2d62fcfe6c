"""Whisper's text decoder as MAX graphs (float32), with a KV cache that stays on the device.

Default design ("whole"), one module compiled once per model shape and cached as a .mef:
  - cross K/V graph: encoder features [A, n_audio_ctx, d] -> every layer's cross-attention K and V,
    run once per window (and reused by every session opened on the same features);
  - step graph: tokens [A, G, n] + positions [n] + causal mask -> token + positional embedding,
    N pre-LN blocks (causal self-attention over cached + new K/V, cross-attention, MLP), final
    LayerNorm, logits from a separate pre-transposed [d, vocab] copy of the tied token embedding.
    It takes each layer's past self-attention K/V and returns them concatenated with the new
    positions; the session feeds those buffers back on the next call, so the cache never visits
    the host. Symbolic sizes: one compiled graph serves prefill and single-token steps, greedy
    and beam search, one window or several.
A "scores" variant of the step graph (compiled lazily, word timestamps only) returns each layer's
cross-attention scores q.k / sqrt(head_dim) before the softmax instead of logits.
The "blocks" design (cross K/V, embed, one block graph loaded per layer, head) is kept for the
measured comparison (bench/decoder_bench.py --designs whole blocks): it compiles slower and steps
~5% slower on this CPU, since MAX's compile time for the step graph does not grow with the layers.

Rows are laid out [A, G, ...]: A audio windows, G rows (beams, samples) per window; row r of the
decoding batch attends to window r // G. The G rows of a window share its cross K/V: their queries
form one [G * n, hd] matrix per head, so K/V are read once per window, not once per beam.

Layouts: weights pre-transposed to [in, out] (MAX's matmul against a contiguous [in, out] weight is
~2x faster than against transpose(W)); q, k, v fused in one [d, 3d] projection with the 1/sqrt(hd)
softmax scale folded into q (k has no bias); the residual stream is 2-D [A*G*n, d] so projections are
plain GEMMs; self K cached as [A, G, H, hd, len] and V as [A, G, H, len, hd] (the concat is the only
copy per step); cross K as [A, H, hd, ctx], V as [A, H, ctx, hd].
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from max.driver import CPU, Buffer, Device
from max.dtype import DType
from max.engine import InferenceSession, Model
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue, Weight, ops

from ...dims import ModelDimensions
from .compile_cache import compiled_graph

LN_EPS = 1e-5
N_AUDIO = "n_audio"
GROUP = "group"  # token rows per audio (beams); a batch of rows is laid out [n_audio, group, ...]
N_NEW = "n_new"  # tokens fed in this call
N_PAST = "n_past"  # cached positions
N_TOTAL = "n_total"  # n_past + n_new (the mask's width)


# --- graph pieces ------------------------------------------------------------------------------


def _weight(name: str, shape: list[int], device: DeviceRef) -> TensorValue:
    return Weight(name, DType.float32, shape, device).tensor  # type: ignore[attr-defined]


def _layer_norm(x: TensorValue, name: str, d: int, device: DeviceRef) -> TensorValue:
    return ops.layer_norm(x, _weight(f"{name}.weight", [d], device), _weight(f"{name}.bias", [d], device), LN_EPS)


def _linear(x: TensorValue, name: str, d_in: int, d_out: int, device: DeviceRef, bias: bool = True) -> TensorValue:
    y = x @ _weight(f"{name}.weight", [d_in, d_out], device)
    return y + _weight(f"{name}.bias", [d_out], device) if bias else y


def _block(x: TensorValue, mask: TensorValue, past_k: TensorValue, past_v: TensorValue,
           cross_k: TensorValue, cross_v: TensorValue, dims: ModelDimensions, device: DeviceRef,
           prefix: str = "") -> tuple[TensorValue, TensorValue, TensorValue, TensorValue]:
    """One residual block on x [A, G, n, d]. Returns (x, k_all, v_all, cross scores before softmax).

    The residual stream is kept 2-D [A*G*n, d] so every projection is one plain GEMM (batched
    matmuls would re-read the weight once per row; MAX's batched matmul also stops at rank 4).
    """
    d, heads = dims.n_text_state, dims.n_text_head
    hd = d // heads
    n_audio, group, n_new = x.shape[0], x.shape[1], x.shape[2]
    rows = n_audio * group
    x = ops.reshape(x, [rows * n_new, d])

    # causal self-attention over the cached and the new positions
    h = _layer_norm(x, f"{prefix}attn_ln", d, device)
    qkv = _linear(h, f"{prefix}attn.qkv", d, 3 * d, device)  # q carries the 1/sqrt(hd) scale
    qkv = ops.permute(ops.reshape(qkv, [rows, n_new, 3, heads, hd]), [2, 0, 3, 1, 4])  # [3, AG, H, n, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    new_k = ops.reshape(ops.permute(k, [0, 1, 3, 2]), [n_audio, group, heads, hd, n_new])
    new_v = ops.reshape(v, [n_audio, group, heads, n_new, hd])
    k_all = ops.concat([past_k, new_k], axis=4)  # [A, G, H, hd, past + n]
    v_all = ops.concat([past_v, new_v], axis=3)  # [A, G, H, past + n, hd]
    n_total = k_all.shape[4]
    scores = q @ ops.reshape(k_all, [rows, heads, hd, n_total]) + ops.rebind(mask, [n_new, n_total])
    attn = ops.softmax(scores) @ ops.reshape(v_all, [rows, heads, n_total, hd])  # [AG, H, n, hd]
    attn = ops.reshape(ops.permute(attn, [0, 2, 1, 3]), [rows * n_new, d])
    x = x + _linear(attn, f"{prefix}attn.out", d, d, device)

    # cross-attention: the G rows (beams) of one audio share its K/V: one [G * n, hd] query matrix
    # per head, so K/V are read once per audio rather than once per row
    h = _layer_norm(x, f"{prefix}cross_attn_ln", d, device)
    q = _linear(h, f"{prefix}cross_attn.query", d, d, device)  # scaled by 1/sqrt(hd)
    q = ops.permute(ops.reshape(q, [n_audio, group * n_new, heads, hd]), [0, 2, 1, 3])  # [A, H, G*n, hd]
    cross_scores = q @ cross_k  # [A, H, G*n, ctx]
    attn = ops.softmax(cross_scores) @ cross_v  # [A, H, G*n, hd]
    attn = ops.reshape(ops.permute(attn, [0, 2, 1, 3]), [rows * n_new, d])
    x = x + _linear(attn, f"{prefix}cross_attn.out", d, d, device)

    h = _layer_norm(x, f"{prefix}mlp_ln", d, device)
    h = ops.gelu(_linear(h, f"{prefix}mlp.0", d, 4 * d, device), approximate="none")
    x = x + _linear(h, f"{prefix}mlp.2", 4 * d, d, device)
    return ops.reshape(x, [n_audio, group, n_new, d]), k_all, v_all, cross_scores


def _embed(tokens: TensorValue, positions: TensorValue, dims: ModelDimensions, device: DeviceRef) -> TensorValue:
    d = dims.n_text_state
    tok = ops.gather(_weight("token_embedding", [dims.n_vocab, d], device), tokens, axis=0)  # [A, G, n, d]
    pos = ops.gather(_weight("positional_embedding", [dims.n_text_ctx, d], device), positions, axis=0)  # [n, d]
    return tok + pos


def _head(x: TensorValue, dims: ModelDimensions, device: DeviceRef) -> TensorValue:
    d = dims.n_text_state
    n_audio, group, n_new = x.shape[0], x.shape[1], x.shape[2]
    x = _layer_norm(ops.reshape(x, [n_audio * group * n_new, d]), "ln", d, device)
    logits = x @ _weight("token_embedding_t", [d, dims.n_vocab], device)  # one GEMM: W read once
    return ops.reshape(logits, [n_audio, group, n_new, dims.n_vocab])


# --- input types -------------------------------------------------------------------------------


def _types(dims: ModelDimensions, device: DeviceRef) -> dict[str, TensorType]:
    d, heads, ctx = dims.n_text_state, dims.n_text_head, dims.n_audio_ctx
    hd = d // heads
    f32 = DType.float32
    return {
        "tokens": TensorType(DType.int64, [N_AUDIO, GROUP, N_NEW], device=device),
        "positions": TensorType(DType.int64, [N_NEW], device=device),
        "x": TensorType(f32, [N_AUDIO, GROUP, N_NEW, d], device=device),
        "mask": TensorType(f32, [N_NEW, N_TOTAL], device=device),
        "past_k": TensorType(f32, [N_AUDIO, GROUP, heads, hd, N_PAST], device=device),
        "past_v": TensorType(f32, [N_AUDIO, GROUP, heads, N_PAST, hd], device=device),
        "cross_k": TensorType(f32, [N_AUDIO, heads, hd, ctx], device=device),
        "cross_v": TensorType(f32, [N_AUDIO, heads, ctx, hd], device=device),
        "features": TensorType(f32, [N_AUDIO, ctx, dims.n_audio_state], device=device),
    }


def _cross_kv(f: TensorValue, dims: ModelDimensions, device: DeviceRef, prefix: str) -> list[TensorValue]:
    d, heads, ctx = dims.n_text_state, dims.n_text_head, dims.n_audio_ctx
    hd = d // heads
    n_audio = f.shape[0]
    k = _linear(f, f"{prefix}cross_attn.key", dims.n_audio_state, d, device, bias=False)
    v = _linear(f, f"{prefix}cross_attn.value", dims.n_audio_state, d, device)
    return [ops.permute(ops.reshape(k, [n_audio, ctx, heads, hd]), [0, 2, 3, 1]),  # [A, H, hd, ctx]
            ops.permute(ops.reshape(v, [n_audio, ctx, heads, hd]), [0, 2, 1, 3])]  # [A, H, ctx, hd]


def build_cross_kv_graph(dims: ModelDimensions, device: DeviceRef, all_layers: bool = False,
                         module: Module | None = None) -> Graph:
    """features [A, ctx, d] -> cross K [A, H, hd, ctx] and V [A, H, ctx, hd]: of one layer (weights
    unprefixed, loaded once per layer), or of every layer (weights under blocks.{i}.)."""
    t = _types(dims, device)
    name = "whisper_decoder_cross_kv_all" if all_layers else "whisper_decoder_cross_kv"
    with Graph(name, input_types=[t["features"]], module=module) as graph:
        f = graph.inputs[0].tensor
        layers = range(dims.n_text_layer) if all_layers else [None]
        graph.output(*(out for i in layers for out in _cross_kv(f, dims, device, "" if i is None else f"blocks.{i}.")))
    return graph


def build_embed_graph(dims: ModelDimensions, device: DeviceRef) -> Graph:
    t = _types(dims, device)
    with Graph("whisper_decoder_embed", input_types=[t["tokens"], t["positions"]]) as graph:
        graph.output(_embed(graph.inputs[0].tensor, graph.inputs[1].tensor, dims, device))
    return graph


def build_block_graph(dims: ModelDimensions, device: DeviceRef) -> Graph:
    """(x, mask, past_k, past_v, cross_k, cross_v) -> (x, k_all, v_all)."""
    t = _types(dims, device)
    names = ("x", "mask", "past_k", "past_v", "cross_k", "cross_v")
    with Graph("whisper_decoder_block", input_types=[t[n] for n in names]) as graph:
        x, k, v, _ = _block(*(i.tensor for i in graph.inputs), dims, device)
        graph.output(x, k, v)
    return graph


def build_head_graph(dims: ModelDimensions, device: DeviceRef) -> Graph:
    t = _types(dims, device)
    with Graph("whisper_decoder_head", input_types=[t["x"]]) as graph:
        graph.output(_head(graph.inputs[0].tensor, dims, device))
    return graph


def build_step_graph(dims: ModelDimensions, device: DeviceRef, scores: bool = False,
                     module: Module | None = None) -> Graph:
    """The whole decoder step in one graph.

    Inputs: tokens [A, G, n], positions [n], mask [n, past + n], then cross_k, cross_v per layer,
    then past_k, past_v per layer. Outputs: logits [A, G, n, vocab], then k_all, v_all per layer;
    or, with `scores`, only each layer's cross-attention scores before the softmax [A, H, G*n, ctx].
    """
    t = _types(dims, device)
    n_layer = dims.n_text_layer
    types = [t["tokens"], t["positions"], t["mask"]]
    types += [t["cross_k"], t["cross_v"]] * n_layer + [t["past_k"], t["past_v"]] * n_layer
    name = "whisper_decoder_scores" if scores else "whisper_decoder_step"
    with Graph(name, input_types=types, module=module) as graph:
        tokens, positions, mask, *rest = (i.tensor for i in graph.inputs)
        cross, past = rest[: 2 * n_layer], rest[2 * n_layer:]
        x = _embed(tokens, positions, dims, device)
        caches, layer_scores = [], []
        for i in range(n_layer):
            x, k, v, s = _block(x, mask, past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1],
                                dims, device, f"blocks.{i}.")
            caches += [k, v]
            layer_scores.append(s)
        if scores:
            graph.output(*layer_scores)
        else:
            graph.output(_head(x, dims, device), *caches)
    return graph


def build_whole_module(dims: ModelDimensions, device: DeviceRef) -> Module:
    """The default design: the all-layer cross K/V graph and the whole step graph, compiled together
    (one compile shares its fixed cost: ~125 s cold for tiny against ~160 s for the two apart)."""
    module = Module()
    build_cross_kv_graph(dims, device, all_layers=True, module=module)
    build_step_graph(dims, device, module=module)
    return module


# --- weights: openai-whisper names -> registry arrays laid out for these graphs --------------------


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def embed_registry(dims: ModelDimensions, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"token_embedding": _f32(params["decoder.token_embedding.weight"]),
            "positional_embedding": _f32(params["decoder.positional_embedding"])}


def head_registry(dims: ModelDimensions, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"ln.weight": _f32(params["decoder.ln.weight"]), "ln.bias": _f32(params["decoder.ln.bias"]),
            "token_embedding_t": _f32(params["decoder.token_embedding.weight"].T)}


def block_registry(dims: ModelDimensions, params: dict[str, np.ndarray], layer: int,
                   prefix: str = "") -> dict[str, np.ndarray]:
    src = f"decoder.blocks.{layer}."
    d = dims.n_text_state
    scale = np.float32(1.0 / math.sqrt(d // dims.n_text_head))  # openai scales q and k by hd**-0.25 each
    p = {name[len(src):]: np.asarray(a, dtype=np.float32) for name, a in params.items() if name.startswith(src)}
    qkv_w = np.concatenate([p["attn.query.weight"] * scale, p["attn.key.weight"], p["attn.value.weight"]])
    qkv_b = np.concatenate([p["attn.query.bias"] * scale, np.zeros(d, np.float32), p["attn.value.bias"]])
    registry = {"attn.qkv.weight": _f32(qkv_w.T), "attn.qkv.bias": _f32(qkv_b),
                "cross_attn.query.weight": _f32((p["cross_attn.query.weight"] * scale).T),
                "cross_attn.query.bias": _f32(p["cross_attn.query.bias"] * scale)}
    for name in ("attn.out", "cross_attn.out", "mlp.0", "mlp.2"):
        registry[f"{name}.weight"] = _f32(p[f"{name}.weight"].T)
        registry[f"{name}.bias"] = _f32(p[f"{name}.bias"])
    for name in ("attn_ln", "cross_attn_ln", "mlp_ln"):
        registry[f"{name}.weight"] = _f32(p[f"{name}.weight"])
        registry[f"{name}.bias"] = _f32(p[f"{name}.bias"])
    return {prefix + name: a for name, a in registry.items()}


def cross_kv_registry(dims: ModelDimensions, params: dict[str, np.ndarray], layer: int,
                      prefix: str = "") -> dict[str, np.ndarray]:
    src = f"decoder.blocks.{layer}.cross_attn."
    return {f"{prefix}cross_attn.key.weight": _f32(params[src + "key.weight"].T),
            f"{prefix}cross_attn.value.weight": _f32(params[src + "value.weight"].T),
            f"{prefix}cross_attn.value.bias": _f32(params[src + "value.bias"])}


def step_registry(dims: ModelDimensions, params: dict[str, np.ndarray],
                  blocks: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    registry = embed_registry(dims, params) | head_registry(dims, params)
    for i in range(dims.n_text_layer):
        block = blocks[i] if blocks is not None else block_registry(dims, params, i)
        registry |= {f"blocks.{i}.{name}": a for name, a in block.items()}
    return registry


# --- runtime -------------------------------------------------------------------------------------


# Bump whenever the graph-building code above changes what a graph computes: cached .mef files of
# the old graphs then stop matching.
DECODER_GRAPH_VERSION = 2

# Cold-compile estimates (s) on a 2-core CPU, shown before a first compile.
_ESTIMATES = {"whole": 125, "scores": 105, "cross_kv": 55, "embed": 20, "block": 90, "head": 60}


def _signature(kind: str, dims: ModelDimensions) -> dict:
    """What a compiled decoder graph depends on (never the weight values): graphs are shared by
    every model whose relevant dims agree (tiny and tiny.en share the blocks-design block graph)."""
    text = {"n_text_state": dims.n_text_state, "n_text_head": dims.n_text_head}
    shapes = {
        "whole": dims.to_dict(),
        "scores": dims.to_dict(),
        "cross_kv": {**text, "n_audio_ctx": dims.n_audio_ctx, "n_audio_state": dims.n_audio_state},
        "embed": {**text, "n_vocab": dims.n_vocab, "n_text_ctx": dims.n_text_ctx},
        "block": {**text, "n_audio_ctx": dims.n_audio_ctx},
        "head": {**text, "n_vocab": dims.n_vocab},
    }[kind]
    return {"graph": f"decoder_{kind}", "dtype": "float32", "version": DECODER_GRAPH_VERSION, **shapes}


class MaxDecoder:
    """The compiled decoder graphs of one model with its weights bound; sessions share it.

    design "whole" (default): one module holding the all-layer cross K/V graph and the whole step graph.
    design "blocks" (measured alternative): cross K/V and block graphs loaded once per layer, plus
    embed and head graphs. Both keep the KV cache in MAX buffers and give the same logits.
    Cold compile on the 2-core dev CPU, tiny / base: whole ~115-125 s as one module (162 / 157 s as
    two separate compiles), blocks 224 / 196 s: the step graph's compile does not grow with the
    layer count, while every extra graph pays MAX's fixed cost of a compile. Step: whole is 2-10%
    faster (tiny 9.4 vs 9.5 ms, base 19.4 vs 20.6 ms, greedy).
    """

    def __init__(self, dims: ModelDimensions, params: dict[str, np.ndarray], device: Device,
                 device_ref: DeviceRef, session: InferenceSession | None = None, design: str = "whole"):
        if design not in ("whole", "blocks"):
            raise ValueError(f"unknown decoder design {design!r} (whole or blocks)")
        self.dims, self.device, self.device_ref, self.design = dims, device, device_ref, design
        self.session = session or InferenceSession(devices=[device])
        n_layer = dims.n_text_layer
        self._keep: list[dict] = []  # MAX reads host arrays in place: registries must outlive models
        self.compile_seconds: dict[str, float] = {}
        blocks = [block_registry(dims, params, i) for i in range(n_layer)]
        self._step_registry = step_registry(dims, params, blocks)

        if design == "whole":
            cross = {name: a for i in range(n_layer) for name, a in
                     cross_kv_registry(dims, params, i, prefix=f"blocks.{i}.").items()}
            models = self._init_all(self._compiled("whole", build_whole_module), self._step_registry | cross)
            self._cross_kv = [models["whisper_decoder_cross_kv_all"]]
            self._step = models["whisper_decoder_step"]
        else:
            compiled = self._compiled("cross_kv", build_cross_kv_graph)
            self._cross_kv = [self._init(compiled, cross_kv_registry(dims, params, i)) for i in range(n_layer)]
            self._embed = self._init(self._compiled("embed", build_embed_graph), embed_registry(dims, params))
            compiled = self._compiled("block", build_block_graph)
            self._blocks = [self._init(compiled, r) for r in blocks]
            self._head = self._init(self._compiled("head", build_head_graph), head_registry(dims, params))
        self._scores: Model | None = None
        self._last_cross: tuple[np.ndarray, list[Buffer]] | None = None
        d, heads = dims.n_text_state, dims.n_text_head
        self._cache_shapes = ((heads, d // heads, 0), (heads, 0, d // heads))  # after [A, G]
        self._zero_mask = np.zeros((1, dims.n_text_ctx), np.float32)

    def _compiled(self, kind: str, build: Callable[[ModelDimensions, DeviceRef], Graph | Module]):
        """The compiled graph from the on-disk .mef cache, or compiled now (with progress) and saved."""
        label = f"decoder {kind} ({self.dims.n_text_state} wide, {self.dims.n_text_layer} layers)"
        compiled, seconds = compiled_graph(self.session, lambda: build(self.dims, self.device_ref),
                                           _signature(kind, self.dims), label, _ESTIMATES[kind])
        self.compile_seconds[kind] = seconds  # 0.0 when it came from the cache
        return compiled

    def _registry(self, registry: dict[str, np.ndarray]) -> dict:
        self._keep.append(registry)
        if self.device.is_host:
            return registry
        return {name: Buffer.from_numpy(a).to(self.device) for name, a in registry.items()}

    def _init(self, compiled, registry: dict[str, np.ndarray]) -> Model:
        return self.session.init(compiled, weights_registry=self._registry(registry))

    def _init_all(self, compiled, registry: dict[str, np.ndarray]) -> dict[str, Model]:
        return self.session.init_all(compiled, weights_registry=self._registry(registry))

    # host <-> device
    def _to_device(self, a: np.ndarray) -> Buffer:
        return Buffer.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @staticmethod
    def _to_numpy(b: Buffer) -> np.ndarray:
        return b.to_numpy() if b.is_host else b.to(CPU()).to_numpy()

    def cross_kv(self, audio_features: np.ndarray) -> list[Buffer]:
        """[n_audio, ctx, d] features -> [k_0, v_0, k_1, v_1, ...] on the device.

        The last result is kept: language detection, each temperature of the fallback and word
        timing all open sessions on the same window's features (compared exactly, not by identity).
        The buffers are only ever read, so sessions can share them.
        """
        features = np.ascontiguousarray(audio_features, dtype=np.float32)
        last = self._last_cross
        if last is not None and last[0].shape == features.shape and np.array_equal(last[0], features):
            return last[1]
        f = self._to_device(features)
        out: list[Buffer] = []
        for model in self._cross_kv:
            out += model.execute(f)
        self._last_cross = (features.copy(), out)
        return out

    def empty_cache(self, n_audio: int, group: int) -> list[Buffer]:
        k_shape, v_shape = self._cache_shapes
        return [self._to_device(np.zeros((n_audio, group, *shape), np.float32))
                for _ in range(self.dims.n_text_layer) for shape in (k_shape, v_shape)]

    def _mask(self, n_past: int, n_new: int) -> np.ndarray:
        total = n_past + n_new
        if n_new == 1:
            return self._zero_mask[:, :total]
        cols = np.arange(total)[None, :]
        rows = np.arange(n_past, total)[:, None]
        mask = np.where(cols > rows, np.float32(-np.inf), np.float32(0)).astype(np.float32)
        return mask

    def step(self, tokens: np.ndarray, n_past: int, cross: list[Buffer], cache: list[Buffer]):
        """tokens [A, G, n] (the new ones only) -> (logits Buffer [A, G, n, vocab], new cache)."""
        n_new = tokens.shape[2]
        if n_past + n_new > self.dims.n_text_ctx:
            raise ValueError(f"{n_past + n_new} tokens exceed the text context ({self.dims.n_text_ctx})")
        tokens_b = self._to_device(np.asarray(tokens, dtype=np.int64))
        positions = self._to_device(np.arange(n_past, n_past + n_new, dtype=np.int64))
        mask = self._to_device(self._mask(n_past, n_new))
        if self.design == "whole":
            logits, *new_cache = self._step.execute(tokens_b, positions, mask, *cross, *cache)
            return logits, new_cache
        x = self._embed.execute(tokens_b, positions)[0]
        new_cache = []
        for i, block in enumerate(self._blocks):
            x, k, v = block.execute(x, mask, cache[2 * i], cache[2 * i + 1], cross[2 * i], cross[2 * i + 1])
            new_cache += [k, v]
        return self._head.execute(x)[0], new_cache

    def cross_attention_scores(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Pre-softmax cross-attention scores [n_layer, heads, T, ctx] for one window and one token row."""
        if self._scores is None:  # compiled only when word timestamps are asked for
            self._scores = self._init(self._compiled("scores", lambda d, r: build_step_graph(d, r, scores=True)),
                                      self._step_registry)
        tokens = np.asarray(tokens, dtype=np.int64).reshape(1, 1, -1)
        n = tokens.shape[2]
        if n > self.dims.n_text_ctx:
            raise ValueError(f"{n} tokens exceed the text context ({self.dims.n_text_ctx})")
        cross = self.cross_kv(np.asarray(audio_features, dtype=np.float32)[:1])
        scores = self._scores.execute(self._to_device(tokens), self._to_device(np.arange(n, dtype=np.int64)),
                                      self._to_device(self._mask(0, n)), *cross, *self.empty_cache(1, 1))
        return np.stack([self._to_numpy(s)[0] for s in scores])

    def new_session(self, audio_features: np.ndarray) -> "MaxDecoderSession":
        return MaxDecoderSession(self, audio_features)


class MaxDecoderSession:
    """One decoding pass over a batch of windows (base.DecoderSession); the KV cache stays on the device."""

    def __init__(self, decoder: MaxDecoder, audio_features: np.ndarray):
        self.decoder = decoder
        self.n_audio = audio_features.shape[0]
        self.cross = decoder.cross_kv(audio_features)
        self.cache: list[Buffer] | None = None
        self.n_cached = 0

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        batch, n_tokens = tokens.shape
        if batch % self.n_audio:
            raise ValueError(f"{batch} token rows do not split evenly over {self.n_audio} audio windows")
        group = batch // self.n_audio
        new = tokens[:, self.n_cached:].reshape(self.n_audio, group, -1)
        decoder = self.decoder
        if new.shape[2] == 0:  # nothing new to feed
            return np.zeros((batch, 0, decoder.dims.n_vocab), np.float32)
        if self.cache is None and group > 1 and (new == new[:, :1]).all():
            # Prefill of beams (or samples) that all start alike: run one row per window and copy
            # its cache and logits to the others (5x less work for a beam of 5 after a long prompt).
            logits, cache = decoder.step(new[:, :1], 0, self.cross, decoder.empty_cache(self.n_audio, 1))
            self.cache = [decoder._to_device(np.repeat(decoder._to_numpy(b), group, axis=1)) for b in cache]
            logits = np.repeat(decoder._to_numpy(logits), group, axis=1)
        else:
            if self.cache is None:
                self.cache = decoder.empty_cache(self.n_audio, group)
            logits, self.cache = decoder.step(new, self.n_cached, self.cross, self.cache)
            logits = decoder._to_numpy(logits)
        self.n_cached = n_tokens
        return logits.reshape(batch, -1, logits.shape[-1])

    def rearrange(self, source_indices: list[int]) -> None:
        if self.cache is None:
            return
        index = np.asarray(source_indices, dtype=np.int64)
        if len(index) % self.n_audio:
            raise ValueError(f"{len(index)} rows do not split evenly over {self.n_audio} audio windows")
        cache = []
        for b in self.cache:
            rows = self.decoder._to_numpy(b)
            rows = rows.reshape(-1, *rows.shape[2:])[index]
            cache.append(self.decoder._to_device(rows.reshape(self.n_audio, -1, *rows.shape[1:])))
        self.cache = cache
