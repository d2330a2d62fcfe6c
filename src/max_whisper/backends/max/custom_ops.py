"""Our own Mojo kernels (kernels/*.mojo), built once per machine into a library in the graph cache,
and the graph ops that call them."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import numpy as np
from max.dtype import DType
from max.graph import BufferValue, DeviceRef, StaticDim, TensorType, TensorValue, ops

from ... import dims
from ...cpu import cpu_flags
from .compile_cache import cache_dir, source_hash

KERNELS = Path(__file__).with_name("kernels")
KERNEL_SOURCES = sorted(KERNELS.glob("*.mojo"))
# what a graph calling these ops depends on (dims: the LayerNorm epsilon they are given)
SOURCES = [Path(__file__), Path(dims.__file__), *KERNEL_SOURCES]
HALF_WEIGHT_WIDTH = 8  # the kernel's vector width: the inner dimension must be a multiple of it


class KernelBuildError(RuntimeError):
    """The Mojo compiler could not build our kernels."""


def kernel_library() -> Path:
    """The compiled kernel library (.mojoc), built on first use and kept in the graph cache."""
    version = importlib.metadata.version("max").replace(".", "_")
    # the file's stem is the library's module name: an identifier
    path = cache_dir() / f"whisper_kernels_{source_hash(*KERNEL_SOURCES)}_max{version}.mojoc"
    if path.exists():
        return path
    from mojo.run import subprocess_run_mojo

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".staging-{os.getpid()}"  # the file name is the module's name
    staging.mkdir(exist_ok=True)
    try:
        subprocess_run_mojo(
            ["precompile", str(KERNELS), "-o", str(staging / path.name)],
            capture_output=True,
            check=True,
        )
        os.replace(staging / path.name, path)
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        raise KernelBuildError(
            f"building the Mojo kernels failed: {detail[-1] if detail else error}"
        ) from error
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
    return path


def store_kv(
    cache_k: BufferValue, cache_v: BufferValue, qkv: TensorValue, history: TensorValue
) -> None:
    """Write a step's new keys and values into a layer's KV cache, in place (our kernel, a CPU):
    cache_k [S, H, hd, cap], cache_v [S, H, cap, hd], the fused projection's rows qkv [R, n, 3 H hd]
    (q | k | v) and history [R, P + n] int64 (the slot of each of a row's positions: the new ones
    go to the slots in its last n columns)."""
    ops.inplace_custom("store_kv", qkv.device, [cache_k, cache_v, qkv, history])


def slot_attention(
    q: TensorValue,
    cache_k: BufferValue,
    cache_v: BufferValue,
    history: TensorValue,
    mask: TensorValue,
) -> TensorValue:
    """softmax(q k + mask) v per head over the in-place KV cache (our kernel, a CPU): q [R, M, W]
    (as decoder_attention's), cache_k [S, H, hd, cap], cache_v [S, H, cap, hd], history [R, T]
    (row r's position t is in slot history[r, t]), mask [R, 1, M, T] -> [R, M, H hd]."""
    rows, queries = q.shape[0], q.shape[1]
    d = cache_k.shape[1] * cache_k.shape[2]
    out = TensorType(DType.float32, [rows, queries, d], device=q.device)
    values = [cache_k, cache_v, q, history, mask]
    return ops.inplace_custom("slot_attention", q.device, values, [out])[0].tensor


ATTENTION_HEAD_SIZE = 64  # the attention kernels' head size (every Whisper model's) ...
DECODER_ATTENTION_MAX_CTX = 1536  # ... and the longest context the decoder's scores buffer holds


def decoder_attention(
    q: TensorValue, k: TensorValue, v: TensorValue, mask: TensorValue | None = None
) -> TensorValue:
    """softmax(q k + mask) v per head: q [B, M, W] (head h's query in columns h hd .. (h + 1) hd:
    a q projection's rows, or a fused q|k|v one's), k [B, H, hd, ctx], v [B, H, ctx, hd], mask
    [B, 1, M, ctx] (every head's) or None -> [B, M, H hd]. On a CPU through our kernel (K and V
    streamed once per head; MAX's batched matmuls read them far below the memory's speed when M is
    a few rows), elsewhere MAX's ops."""
    batch, queries = q.shape[0], q.shape[1]
    heads, hd, ctx = k.shape[1], k.shape[2], k.shape[3]
    d = heads * hd
    if (
        q.device.is_cpu()
        and int(hd) == ATTENTION_HEAD_SIZE
        and not (isinstance(ctx, StaticDim) and int(ctx) > DECODER_ATTENTION_MAX_CTX)
    ):
        out = TensorType(DType.float32, [batch, queries, d], device=q.device)
        if mask is None:
            return ops.custom("cross_attention", q.device, [q, k, v], [out])[0].tensor
        return ops.custom("masked_attention", q.device, [q, k, v, mask], [out])[0].tensor
    heads_q = ops.permute(ops.reshape(q[:, :, :d], [batch, queries, heads, hd]), [0, 2, 1, 3])
    scores = heads_q @ k
    attn = ops.softmax(scores if mask is None else scores + mask) @ v  # [B, H, M, hd]
    return ops.reshape(ops.permute(attn, [0, 2, 1, 3]), [batch, queries, d])


def self_attention(qkv: TensorValue, heads: int) -> TensorValue:
    """softmax(q kᵀ) v per head from the fused projection qkv [A, T, 3*d] (q scaled) -> [A, T, d];
    in float32 on a CPU through our kernel (no permuted copies, key blocks kept in cache for a
    group of queries), elsewhere MAX's ops."""
    batch, ctx, d = qkv.shape[0], qkv.shape[1], int(qkv.shape[2]) // 3
    hd = d // heads
    split = ops.reshape(qkv, [batch, ctx, 3, heads, hd])
    if qkv.device.is_cpu() and qkv.dtype == DType.float32 and hd == ATTENTION_HEAD_SIZE:
        out = TensorType(DType.float32, [batch, ctx, heads, hd], device=qkv.device)
        attn = ops.custom("self_attention", qkv.device, [split], [out])[0].tensor
        return ops.reshape(attn, [batch, ctx, d])
    qkv_heads = ops.permute(split, [2, 0, 3, 1, 4])  # [3, A, H, T, hd]
    q, k, v = qkv_heads[0], qkv_heads[1], qkv_heads[2]
    attn = ops.softmax(q @ ops.transpose(k, 2, 3)) @ v  # MAX fuses this pattern: keep it whole
    return ops.reshape(ops.permute(attn, [0, 2, 1, 3]), [batch, ctx, d])


def _half_weight_op(
    op: str, x: TensorValue, w: TensorValue, inputs: list[TensorValue], parameters=None
) -> TensorValue:
    """One of half_weight_gemv.mojo's ops on x [m, k] and a float16 weight [n, k] -> [m, n]."""
    if x.shape[1] != w.shape[1] or int(w.shape[1]) % HALF_WEIGHT_WIDTH:
        raise ValueError(f"{op}: shapes {x.shape} and {w.shape} do not fit")
    out = TensorType(DType.float32, [x.shape[0], w.shape[0]], device=x.device)
    return ops.custom(op, x.device, inputs, [out], parameters)[0].tensor


def half_weight_matmul(x: TensorValue, w: TensorValue) -> TensorValue:
    """x [m, k] float32 times a float16 weight stored [n, k] (out, in) -> [m, n] float32."""
    return _half_weight_op("half_weight_gemv", x, w, [x, w])


def norm_half_matmul(
    x: TensorValue, norm: tuple[TensorValue, TensorValue], w: TensorValue
) -> TensorValue:
    """layer_norm(x, *norm) times a float16 weight [n, k], in one kernel (x: a few rows)."""
    return _half_weight_op("norm_half_gemv", x, w, [x, *norm, w], {"eps": dims.LAYER_NORM_EPS})


def norm_half_projection(
    x: TensorValue,
    norm: tuple[TensorValue, TensorValue],
    w: TensorValue,
    scale: TensorValue,
    bias: TensorValue,
    gelu: bool = False,
) -> TensorValue:
    """(layer_norm(x, *norm) @ w.T) * scale + bias, then the exact GELU where asked, in one kernel
    (x: a few rows; w float16 [n, k]; scale and bias [n])."""
    return _half_weight_op(
        "norm_half_projection",
        x,
        w,
        [x, *norm, w, scale, bias],
        {"gelu": gelu, "eps": dims.LAYER_NORM_EPS},
    )


def half_projection_add(
    x: TensorValue, w: TensorValue, bias: TensorValue, residual: TensorValue
) -> TensorValue:
    """residual + (x @ w.T + bias), in one kernel (w float16 [n, k])."""
    return _half_weight_op("half_projection_add", x, w, [x, w, bias, residual])


def _panel_width() -> int:
    """panel_matmul's columns a weight panel: two of the CPU's float32 vectors."""
    return 32 if "avx512f" in cpu_flags() else 16


# the out dimension of a projection through panel_matmul must be a multiple of it
PANEL_WIDTH = _panel_width()


def uses_panels(device: DeviceRef, dtype: DType, d_out: int) -> bool:
    """Whether a float32 projection to d_out outputs goes through panel_matmul: on an x86 CPU with
    AVX2 and FMA (its register tile's). weight_layout.for_device lays the weights out by the same
    rule."""
    return (
        device.is_cpu()
        and dtype == DType.float32
        and d_out % PANEL_WIDTH == 0
        and {"avx2", "fma"} <= cpu_flags()
    )


def _zero_bias(bias: TensorValue | None, n: int, device: DeviceRef) -> TensorValue:
    if bias is None:
        return ops.constant(np.zeros(n, np.float32), DType.float32, device)
    return bias


def panel_matmul(x: TensorValue, w: TensorValue, bias: TensorValue | None) -> TensorValue:
    """x [..., k] float32 times a weight laid out in panels [n / PANEL_WIDTH, k, PANEL_WIDTH]
    (weight_layout.to_panels of [k, n]), plus bias [n] -> [..., n] float32."""
    panels, depth = int(w.shape[0]), int(w.shape[1])
    n = panels * PANEL_WIDTH
    if int(x.shape[-1]) != depth or int(w.shape[2]) != PANEL_WIDTH:
        raise ValueError(f"panel_matmul: shapes {x.shape} and {w.shape} do not fit")
    lead = list(x.shape[:-1])
    rows = 1
    for dim in lead:
        rows = rows * dim
    out = TensorType(DType.float32, [rows, n], device=x.device)
    flat = ops.reshape(x, [rows, depth])
    inputs = [flat, w, _zero_bias(bias, n, x.device)]
    y = ops.custom("panel_matmul", x.device, inputs, [out], {"panel": PANEL_WIDTH})[0].tensor
    return ops.reshape(y, [*lead, n])


def panel_conv3(x: TensorValue, w: TensorValue, bias: TensorValue, stride: int) -> TensorValue:
    """A kernel-3 convolution with padding 1 on x [A, T, c] (channels last), its filter as a
    projection of each position's three input rows side by side, laid out in panels
    [n / PANEL_WIDTH, 3 c, PANEL_WIDTH], plus bias [n] -> [A, (T - 1) // stride + 1, n]. The
    positions' rows are read where they lie in the padded input (no im2col copy)."""
    batch, length, channels = x.shape[0], int(x.shape[1]), int(x.shape[2])
    panels = int(w.shape[0])
    if int(w.shape[1]) != 3 * channels or int(w.shape[2]) != PANEL_WIDTH:
        raise ValueError(f"panel_conv3: shapes {x.shape} and {w.shape} do not fit")
    positions = (length - 1) // stride + 1
    out = TensorType(DType.float32, [batch, positions, panels * PANEL_WIDTH], device=x.device)
    padded = ops.pad(x, [0, 0, 1, 1, 0, 0])  # a zero row before and after the time axis
    parameters = {"panel": PANEL_WIDTH, "stride": stride}
    return ops.custom("panel_conv3", x.device, [padded, w, bias], [out], parameters)[0].tensor
