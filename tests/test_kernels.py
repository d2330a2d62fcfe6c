"""Our Mojo kernels (backends/max/kernels) in a small graph of their own, against NumPy: the
in-place KV cache (a step's keys and values stored exactly, attention read through each row's
history of slots), the decoder's attention (without and with a mask),
the encoder's self-attention, the panel matmul and the float16-weight projections within float32
reordering, on shapes the model uses (several windows, several beams, a context that is not a
multiple of the vector width) and on contexts that end inside a tile of queries, a block of keys
and a register tile of rows."""

from __future__ import annotations

import numpy as np
import pytest

from max_whisper.backends.max.custom_ops import PANEL_WIDTH as PANEL  # 16 (AVX2), 32 (AVX-512)

HEADS = 4  # the self-attention's (each of 64 features, as every Whisper model's)
PROJECTION = (80, 3 * PANEL)  # the panel matmul's weight [in, out]: 80 mel bins in, three panels


@pytest.fixture(scope="module")
def kernels_graph():
    """The compiled graph: the decoder's attention without and with a mask, the encoder's
    self-attention, the panel matmul."""
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.max.custom_ops import (
        decoder_attention,
        kernel_library,
        panel_matmul,
        self_attention,
    )

    device = DeviceRef.CPU()
    shapes = {
        "q": [2, "queries", 2 * HEADS * 64],  # each head's query in the first half of a row
        "k": [2, 4, 64, 1499],
        "v": [2, 4, 1499, 64],
        "mask": [2, 1, "queries", 1499],
        "qkv": [2, "ctx", 3 * HEADS * 64],
        "x": [2, "ctx", PROJECTION[0]],
        "w": [PROJECTION[1] // PANEL, PROJECTION[0], PANEL],
        "b": [PROJECTION[1]],
    }
    types = [TensorType(DType.float32, shape, device=device) for shape in shapes.values()]
    with Graph("kernels", input_types=types, custom_extensions=[kernel_library()]) as graph:
        q, k, v, mask, qkv, x, w, b = (i.tensor for i in graph.inputs)
        graph.output(
            decoder_attention(q, k, v),
            decoder_attention(q, k, v, mask),
            self_attention(qkv, HEADS),
            panel_matmul(x, w, b),
        )
    session = InferenceSession(devices=[CPU()], custom_extensions=[kernel_library()])
    return session.load(graph)


def _step_mask(rows: int, queries: int, ctx: int, split: int) -> np.ndarray:
    """A decoder step's mask [rows, 1, queries, ctx]: a causal -inf from `split` on in the first
    row, the padding's -1e9 (decoder.step_positions) before it in the second, zeros elsewhere."""
    mask = np.zeros((rows, 1, queries, ctx), np.float32)
    mask[0, 0, :, split:] = -np.inf
    mask[1, 0, :, :split] = -1e9
    return mask


def _attention(q: np.ndarray, k_t: np.ndarray, v: np.ndarray, mask=0.0) -> np.ndarray:
    """softmax(q k_t + mask) v in float64."""
    scores = q.astype(np.float64) @ k_t + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("past, queries, ctx", [(0, 1, 4), (37, 5, 37), (100, 3, 1499)])
def test_kernels_match_numpy(kernels_graph, past, queries, ctx):
    from max.driver import Buffer

    from max_whisper.backends.max.weight_layout import to_panels

    rng = np.random.default_rng(past)
    arrays = [
        rng.standard_normal(shape).astype(np.float32)
        for shape in (
            (2, queries, 2 * HEADS * 64),
            (2, 4, 64, 1499),
            (2, 4, 1499, 64),
            (2, 1, queries, 1499),
            (2, ctx, 3 * HEADS * 64),
            (2, ctx, PROJECTION[0]),
            PROJECTION,
            PROJECTION[1:],
        )
    ]
    arrays[1] *= 3  # sharper softmax rows, as trained attention has
    arrays[3][:] = _step_mask(2, queries, 1499, 700)
    arrays[4][:, :, HEADS * 64 : 2 * HEADS * 64] *= 3  # the self-attention's keys
    arrays[4][:, :, : HEADS * 64] /= 8  # its queries carry the 1/sqrt(64) scale, as the encoder's
    x, w, b = arrays[5:]
    arrays[6] = to_panels(w)
    attended, masked, self_attended, projected = (
        out.to_numpy() for out in kernels_graph.execute(*map(Buffer.from_numpy, arrays))
    )
    q, k, v, mask, qkv = arrays[:5]
    heads_q = q[:, :, : HEADS * 64].reshape(2, queries, HEADS, 64).transpose(0, 2, 1, 3)
    for ours, exact in (
        (attended, _attention(heads_q, k, v)),
        (masked, _attention(heads_q, k, v, mask)),
    ):
        exact = exact.transpose(0, 2, 1, 3).reshape(2, queries, HEADS * 64)
        assert ours.shape == exact.shape
        # float32 scores of sharp rows (|q k| up to ~100) over 1499 keys: a few 1e-5 of the largest
        np.testing.assert_allclose(ours, exact, rtol=0, atol=2e-5 * np.abs(exact).max())
    assert not np.allclose(masked, attended)  # the mask counts

    heads_q, heads_k, heads_v = qkv.reshape(2, ctx, 3, HEADS, 64).transpose(2, 0, 3, 1, 4)
    exact = _attention(heads_q, heads_k.transpose(0, 1, 3, 2), heads_v)  # [2, H, ctx, 64]
    exact = exact.transpose(0, 2, 1, 3).reshape(2, ctx, HEADS * 64)
    assert self_attended.shape == exact.shape
    np.testing.assert_allclose(self_attended, exact, rtol=0, atol=1e-5 * np.abs(exact).max())

    exact = x.astype(np.float64) @ w + b
    assert projected.shape == exact.shape
    np.testing.assert_allclose(projected, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


SLOTS, CAPACITY = 6, 40  # the in-place cache's: 2 windows x 3 beams


@pytest.fixture(scope="module")
def slot_graph():
    """The compiled graph of one layer's in-place cache: a step's keys and values stored into
    slots (store_kv), then attention read through the rows' histories (slot_attention)."""
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import BufferType, DeviceRef, Graph, TensorType

    from max_whisper.backends.max.custom_ops import kernel_library, slot_attention, store_kv

    device = DeviceRef.CPU()
    types = [
        BufferType(DType.float32, ["slots", HEADS, 64, "cap"], device=device),
        BufferType(DType.float32, ["slots", HEADS, "cap", 64], device=device),
        TensorType(DType.float32, ["rows", "new", 3 * HEADS * 64], device=device),
        TensorType(DType.int64, ["rows", "total"], device=device),
        TensorType(DType.float32, ["rows", 1, "new", "total"], device=device),
    ]
    with Graph("slots", input_types=types, custom_extensions=[kernel_library()]) as graph:
        cache_k, cache_v = graph.inputs[0].buffer, graph.inputs[1].buffer
        qkv, history, mask = (i.tensor for i in graph.inputs[2:])
        store_kv(cache_k, cache_v, qkv, history)
        graph.output(slot_attention(qkv, cache_k, cache_v, history, mask))
    session = InferenceSession(devices=[CPU()], custom_extensions=[kernel_library()])
    return session.load(graph)


@pytest.mark.parametrize("past, new", [(0, 3), (23, 1), (30, 2)])
def test_slot_cache_stores_in_place_and_attends_through_histories(slot_graph, past, new):
    """A step writes each row's new keys and values into its slot at the new positions, exactly,
    in the caller's own buffers and nowhere else; each row then attends over its history: its
    past in other rows' slots (beams that shared a prefix, runs of one slot and single
    positions), its new positions in its own."""
    from max.driver import Buffer

    rng = np.random.default_rng(past)
    total = past + new
    cache_k = rng.standard_normal((SLOTS, HEADS, 64, CAPACITY)).astype(np.float32)
    cache_v = rng.standard_normal((SLOTS, HEADS, CAPACITY, 64)).astype(np.float32)
    before_k, before_v = cache_k.copy(), cache_v.copy()
    qkv = rng.standard_normal((SLOTS, new, 3 * HEADS * 64)).astype(np.float32)
    qkv[:, :, HEADS * 64 : 2 * HEADS * 64] *= 3  # sharper softmax rows
    writes = np.array([3, 0, 4, 1, 5, 2])  # the slot each row writes into: not its own index
    history = np.concatenate(
        [rng.integers(0, SLOTS, (SLOTS, past)), np.repeat(writes[:, None], new, axis=1)], axis=1
    )
    if past > 4:
        history[:, 2:past] = history[:, 2:3]  # a long run of one slot after two single positions
    mask = _step_mask(SLOTS, new, total, total // 2)
    causal = np.arange(total)[None, :] > past + np.arange(new)[:, None]  # [new, total]
    mask[:, 0][:, causal] = -np.inf
    (out,) = slot_graph.execute(*map(Buffer.from_numpy, [cache_k, cache_v, qkv, history, mask]))

    _, new_k, new_v = qkv.reshape(SLOTS, new, 3, HEADS, 64).transpose(2, 0, 3, 1, 4)
    expected_k, expected_v = before_k.copy(), before_v.copy()
    expected_k[writes, :, :, past:total] = new_k.swapaxes(2, 3)
    expected_v[writes, :, past:total] = new_v
    assert np.array_equal(cache_k, expected_k) and np.array_equal(cache_v, expected_v)

    positions = np.arange(total)
    k_rows = cache_k[history, :, :, positions[None, :]]  # [rows, total, H, 64]
    v_rows = cache_v[history, :, positions[None, :]]  # [rows, total, H, 64]
    heads_q = qkv[:, :, : HEADS * 64].reshape(SLOTS, new, HEADS, 64).transpose(0, 2, 1, 3)
    exact = _attention(heads_q, k_rows.transpose(0, 2, 3, 1), v_rows.transpose(0, 2, 1, 3), mask)
    exact = exact.transpose(0, 2, 1, 3).reshape(SLOTS, new, HEADS * 64)
    np.testing.assert_allclose(out.to_numpy(), exact, rtol=0, atol=1e-5 * np.abs(exact).max())


def test_weights_are_laid_out_in_panels_exactly_where_the_graphs_read_panels():
    """weight_layout.for_device and layers.linear follow one rule (custom_ops.uses_panels): a
    float32 [in, out] projection weight goes to panels on a CPU where the rule holds; float64
    weights, vectors, embeddings and every weight for a GPU stay as they are."""
    from max.dtype import DType
    from max.graph import DeviceRef

    from max_whisper.backends.max.custom_ops import uses_panels
    from max_whisper.backends.max.weight_layout import for_device, to_panels

    rng = np.random.default_rng(0)
    registry = {
        "blocks.0.mlp.0.weight": rng.standard_normal(PROJECTION).astype(np.float32),
        "blocks.0.mlp.0.bias": rng.standard_normal(PROJECTION[1]).astype(np.float32),
        "blocks.0.attn.out.weight": rng.standard_normal(PROJECTION),  # float64 (a float64 block)
        "token_embedding": rng.standard_normal(PROJECTION).astype(np.float32),
    }
    for device in (DeviceRef.CPU(), DeviceRef.GPU()):
        laid_out = for_device(registry, device)
        panels = uses_panels(device, DType.float32, PROJECTION[1])
        assert panels == (device.is_cpu() and uses_panels(DeviceRef.CPU(), DType.float32, PANEL))
        for name, a in registry.items():
            expected = to_panels(a) if panels and name == "blocks.0.mlp.0.weight" else a
            assert np.array_equal(laid_out[name], expected), name
    w = registry["blocks.0.mlp.0.weight"]
    assert to_panels(w).shape == (PROJECTION[1] // PANEL, PROJECTION[0], PANEL)
    assert np.array_equal(to_panels(w)[2, 5], w[5, 2 * PANEL : 3 * PANEL])  # panel 2, row 5


def test_half_weight_gemv_gives_each_row_the_same_sums_in_any_batch():
    """The float16-weight product of the decoder's steps: each row of x gets bit for bit the sums
    it gets alone, whatever number of rows shares the call (a batch's composition never changes a
    stream's logits), and lands within float32 reordering of float64. 1031 weight rows end inside
    both of the kernel's row groups (3 and 4)."""
    from max.driver import CPU, Buffer
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.max.custom_ops import half_weight_matmul, kernel_library

    device = DeviceRef.CPU()
    n, k = 1031, 128
    types = [
        TensorType(DType.float32, ["rows", k], device=device),
        TensorType(DType.float16, [n, k], device=device),
    ]
    with Graph("half_weight", input_types=types, custom_extensions=[kernel_library()]) as graph:
        graph.output(half_weight_matmul(graph.inputs[0].tensor, graph.inputs[1].tensor))
    model = InferenceSession(devices=[CPU()], custom_extensions=[kernel_library()]).load(graph)

    rng = np.random.default_rng(7)
    w = rng.standard_normal((n, k)).astype(np.float16)
    x = rng.standard_normal((9, k)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    alone = np.concatenate(
        [
            model.execute(Buffer.from_numpy(x[i : i + 1]), Buffer.from_numpy(w))[0].to_numpy()
            for i in range(9)
        ]
    )
    np.testing.assert_allclose(alone, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    for rows in (2, 3, 4, 5, 8, 9):
        together = model.execute(Buffer.from_numpy(x[:rows]), Buffer.from_numpy(w))[0].to_numpy()
        assert np.array_equal(together, alone[:rows]), f"{rows} rows"


def test_half_weight_projections_match_numpy():
    """The few-rows step's projections with their neighbours in the kernel: LayerNorm then the
    product, the scale and bias, GELU; the product, bias and residual sum; LayerNorm then the
    product alone. Against float64 NumPy, for 1 to 8 rows, each row as it gets alone."""
    from math import erf

    from max.driver import CPU, Buffer
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.max.custom_ops import (
        half_projection_add,
        kernel_library,
        norm_half_matmul,
        norm_half_projection,
    )

    device = DeviceRef.CPU()
    n, k = 1031, 128
    f32 = DType.float32
    types = [
        TensorType(f32, ["rows", k], device=device),  # x
        TensorType(f32, [k], device=device),  # gamma
        TensorType(f32, [k], device=device),  # beta
        TensorType(DType.float16, [n, k], device=device),  # w [out, in]
        TensorType(f32, [n], device=device),  # scale
        TensorType(f32, [n], device=device),  # bias
        TensorType(DType.float16, [k, 1024], device=device),  # w2: 1024 of h's columns in, k out
        TensorType(f32, ["rows", k], device=device),  # residual
    ]
    with Graph("projections", input_types=types, custom_extensions=[kernel_library()]) as graph:
        x, gamma, beta, w, scale, bias, w2, residual = (i.tensor for i in graph.inputs)
        h = norm_half_projection(x, (gamma, beta), w, scale, bias, gelu=True)
        graph.output(
            h,
            norm_half_projection(x, (gamma, beta), w, scale, bias),
            half_projection_add(h[:, :1024], w2, bias[:k], residual),
            norm_half_matmul(x, (gamma, beta), w),
        )
    model = InferenceSession(devices=[CPU()], custom_extensions=[kernel_library()]).load(graph)

    rng = np.random.default_rng(11)
    x = (rng.standard_normal((8, k)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal((2, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / 8).astype(np.float16)
    scale = np.where(np.arange(n) < 384, 0.125, 1.0).astype(np.float32)  # q's, then the rest
    bias = rng.standard_normal(n).astype(np.float32)
    w2 = (rng.standard_normal((k, 1024)) / 32).astype(np.float16)
    residual = rng.standard_normal((8, k)).astype(np.float32)
    inputs = [x, gamma, beta, w, scale, bias, w2, residual]

    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * gamma + beta
    product = normed @ w.astype(np.float64).T
    linear = product * scale + bias
    gelu = linear * 0.5 * (1 + np.vectorize(erf)(linear / np.sqrt(2)))
    added = residual + (gelu[:, :1024] @ w2.astype(np.float64).T + bias[:k])
    exact = [gelu, linear, added, product]

    def run(rows: slice) -> list[np.ndarray]:
        buffers = [Buffer.from_numpy(a[rows] if a.shape[:1] == (8,) else a) for a in inputs]
        return [out.to_numpy() for out in model.execute(*buffers)]

    alone = [np.concatenate(parts) for parts in zip(*(run(slice(i, i + 1)) for i in range(8)))]
    for ours, want in zip(alone, exact, strict=True):
        assert ours.shape == want.shape
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for rows in (3, 8):
        for together, single in zip(run(slice(0, rows)), alone, strict=True):
            assert np.array_equal(together, single[:rows]), f"{rows} rows"


CONV_CASES = [(1, 37), (2, 37), (2, 100)]  # (stride, length): lengths ending inside a row tile
CONV_CHANNELS = 24


@pytest.fixture(scope="module")
def conv_graph():
    """panel_conv3 on two windows of each case's length, one output per case."""
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.max.custom_ops import kernel_library, panel_conv3

    device = DeviceRef.CPU()
    lengths = sorted({length for _, length in CONV_CASES})
    types = [
        TensorType(DType.float32, [2, length, CONV_CHANNELS], device=device) for length in lengths
    ]
    types.append(TensorType(DType.float32, [2, 3 * CONV_CHANNELS, PANEL], device=device))
    types.append(TensorType(DType.float32, [2 * PANEL], device=device))
    with Graph("conv", input_types=types, custom_extensions=[kernel_library()]) as graph:
        *xs, w, b = (i.tensor for i in graph.inputs)
        by_length = dict(zip(lengths, xs))
        graph.output(*(panel_conv3(by_length[n], w, b, stride) for stride, n in CONV_CASES))
    model = InferenceSession(devices=[CPU()], custom_extensions=[kernel_library()]).load(graph)
    return model, lengths


def test_panel_conv3_matches_a_convolution(conv_graph):
    """The stem's convolutions through panel_conv3 (kernel 3, padding 1, the rows read where they
    lie): two windows, each position against float64 sums over its three input rows, the first
    and last reading the zero padding, strides 1 and 2."""
    from max.driver import Buffer

    from max_whisper.backends.max.weight_layout import to_panels

    model, lengths = conv_graph
    rng = np.random.default_rng(3)
    xs = {n: rng.standard_normal((2, n, CONV_CHANNELS)).astype(np.float32) for n in lengths}
    w = rng.standard_normal((3 * CONV_CHANNELS, 2 * PANEL)).astype(np.float32)  # tap, channel
    b = rng.standard_normal(2 * PANEL).astype(np.float32)
    inputs = [*(xs[n] for n in lengths), to_panels(w), b]
    outputs = [o.to_numpy() for o in model.execute(*map(Buffer.from_numpy, inputs))]
    for (stride, length), ours in zip(CONV_CASES, outputs):
        padded = np.pad(xs[length].astype(np.float64), ((0, 0), (1, 1), (0, 0)))
        positions = (length - 1) // stride + 1
        rows = [padded[:, t * stride : t * stride + 3].reshape(2, -1) for t in range(positions)]
        exact = np.stack(rows, axis=1) @ w + b
        assert ours.shape == exact.shape == (2, positions, 2 * PANEL)
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
