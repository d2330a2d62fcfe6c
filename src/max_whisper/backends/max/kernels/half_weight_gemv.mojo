# out[m, n] = sum_k x[m, k] * w[n, k]: float32 activations against a float16 weight stored row by
# row ([out, in]), accumulated in float32. A decoder step multiplies a few rows by a large weight, so
# its time is the weight's read: half the bytes, about half the time. Every float16 value is exact
# in float32, so the products are those of the float32 weight; only the order of the sums differs,
# as between any two float32 kernels.
#
# The layer's neighbours ride along where a step asks (each a kernel of its own otherwise, and a
# single-token step is mostly such small kernels): the LayerNorm before the product, the scale,
# bias and GELU after it, and the residual sum.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from std.math import erf, sqrt
from std.memory import stack_allocation
from std.sys.intrinsics import prefetch, PrefetchOptions

comptime NORM_MAX = 16384  # floats of normalised rows (a few-rows step: 8 rows of up to 2048)


@always_inline
def project[
    norm: Bool, scaled: Bool, biased: Bool, gelu: Bool, add: Bool, eps: Float32 = 0
](
    output: OutputTensor[dtype=DType.float32, rank=2, ...],
    x: InputTensor[dtype=DType.float32, rank=2, ...],
    w: InputTensor[dtype=DType.float16, rank=2, ...],
    gamma: InputTensor[dtype=DType.float32, ...],
    beta: InputTensor[dtype=DType.float32, ...],
    scale: InputTensor[dtype=DType.float32, ...],
    bias: InputTensor[dtype=DType.float32, ...],
    residual: InputTensor[dtype=DType.float32, ...],
) raises:
    # output [m, n] = residual + gelu((w . layer_norm(x, eps)) * scale + bias), each part where
    # its flag asks; x [m, k], w [n, k], gamma and beta [k], scale and bias [n], residual [m, n]
    var rows = x.dim_size(0)
    var depth = x.dim_size(1)
    var cols = w.dim_size(0)
    var xp = x.unsafe_ptr()
    comptime if norm:  # the rows normalised once, before the tasks share them
        if rows * depth > NORM_MAX:
            raise Error("half-weight projection: too many rows to normalise in one call")
        var xn = stack_allocation[NORM_MAX, Float32]()
        layer_norm(xn, xp, gamma.unsafe_ptr(), beta.unsafe_ptr(), rows, depth, eps)
        xp = rebind[type_of(xp)](xn)
    var sp = scale.unsafe_ptr()
    var bp = bias.unsafe_ptr()
    var rp = residual.unsafe_ptr()
    var wp = w.unsafe_ptr()
    var op = output.unsafe_ptr()
    comptime width = 8  # one AVX2 register of float32
    # weight rows requested from memory ahead of their use: the hardware prefetcher alone
    # leaves a one-row product at about half the memory's speed
    comptime rows_ahead = 8
    # The vocabulary's weight, the step's largest read, is fetched with a non-temporal hint: cached
    # like the others, it would push out of the last-level cache the layers' weights and the
    # window's cross K/V, which the next step reads again.
    var streaming = cols >= 4096
    # weight rows per task: large for the vocabulary, small enough for a layer to split
    var chunk = 2048 if streaming else 64
    var n_chunks = (cols + chunk - 1) // chunk

    @always_inline
    def products(start: Int, end: Int) {imm}:
        var n = start
        # Four rows of x or more (a batch, a beam): 3 weight rows against 4 rows of x at a
        # time, 12 sums that stay in the 16 AVX2 registers with the 3 weight vectors and
        # the x vector (a 4 x 4 tile spills its sums to the stack on every k).
        if rows >= 4:
            while n + 3 <= end:
                var w0 = wp.unsafe_offset(n * depth)
                var w1 = wp.unsafe_offset((n + 1) * depth)
                var w2 = wp.unsafe_offset((n + 2) * depth)
                var ahead = wp.unsafe_offset((n + rows_ahead) * depth)
                for j in range(0, 3 * depth, 32):
                    fetch_line(ahead.unsafe_offset(j), streaming)
                var m = 0
                while m + 4 <= rows:
                    var x0 = xp.unsafe_offset(m * depth)
                    var x1 = xp.unsafe_offset((m + 1) * depth)
                    var x2 = xp.unsafe_offset((m + 2) * depth)
                    var x3 = xp.unsafe_offset((m + 3) * depth)
                    var a00 = SIMD[DType.float32, width](0)
                    var a01 = SIMD[DType.float32, width](0)
                    var a02 = SIMD[DType.float32, width](0)
                    var a10 = SIMD[DType.float32, width](0)
                    var a11 = SIMD[DType.float32, width](0)
                    var a12 = SIMD[DType.float32, width](0)
                    var a20 = SIMD[DType.float32, width](0)
                    var a21 = SIMD[DType.float32, width](0)
                    var a22 = SIMD[DType.float32, width](0)
                    var a30 = SIMD[DType.float32, width](0)
                    var a31 = SIMD[DType.float32, width](0)
                    var a32 = SIMD[DType.float32, width](0)
                    for k in range(0, depth, width):
                        var v0 = w0.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]()
                        var v1 = w1.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]()
                        var v2 = w2.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]()
                        var u = x0.unsafe_offset(k).unsafe_load[width=width]()
                        a00 += v0 * u
                        a01 += v1 * u
                        a02 += v2 * u
                        u = x1.unsafe_offset(k).unsafe_load[width=width]()
                        a10 += v0 * u
                        a11 += v1 * u
                        a12 += v2 * u
                        u = x2.unsafe_offset(k).unsafe_load[width=width]()
                        a20 += v0 * u
                        a21 += v1 * u
                        a22 += v2 * u
                        u = x3.unsafe_offset(k).unsafe_load[width=width]()
                        a30 += v0 * u
                        a31 += v1 * u
                        a32 += v2 * u
                    var o = op.unsafe_offset(m * cols + n)
                    o.unsafe_store(a00.reduce_add())
                    o.unsafe_offset(1).unsafe_store(a01.reduce_add())
                    o.unsafe_offset(2).unsafe_store(a02.reduce_add())
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(a10.reduce_add())
                    o.unsafe_offset(1).unsafe_store(a11.reduce_add())
                    o.unsafe_offset(2).unsafe_store(a12.reduce_add())
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(a20.reduce_add())
                    o.unsafe_offset(1).unsafe_store(a21.reduce_add())
                    o.unsafe_offset(2).unsafe_store(a22.reduce_add())
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(a30.reduce_add())
                    o.unsafe_offset(1).unsafe_store(a31.reduce_add())
                    o.unsafe_offset(2).unsafe_store(a32.reduce_add())
                    m += 4
                while m < rows:
                    var xr = xp.unsafe_offset(m * depth)
                    var b0 = SIMD[DType.float32, width](0)
                    var b1 = SIMD[DType.float32, width](0)
                    var b2 = SIMD[DType.float32, width](0)
                    for k in range(0, depth, width):
                        var u = xr.unsafe_offset(k).unsafe_load[width=width]()
                        b0 += w0.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                        b1 += w1.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                        b2 += w2.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                    var o = op.unsafe_offset(m * cols + n)
                    o.unsafe_store(b0.reduce_add())
                    o.unsafe_offset(1).unsafe_store(b1.reduce_add())
                    o.unsafe_offset(2).unsafe_store(b2.reduce_add())
                    m += 1
                n += 3
        # fewer rows: 4 weight rows at a time, against one row of x at a time
        while n + 4 <= end:
            var w0 = wp.unsafe_offset(n * depth)
            var w1 = wp.unsafe_offset((n + 1) * depth)
            var w2 = wp.unsafe_offset((n + 2) * depth)
            var w3 = wp.unsafe_offset((n + 3) * depth)
            # a prefetch never faults, so the rows past the end need no check
            var ahead = wp.unsafe_offset((n + rows_ahead) * depth)
            for j in range(0, 4 * depth, 32):  # one 64-byte line per 32 float16 values
                fetch_line(ahead.unsafe_offset(j), streaming)
            for m in range(rows):
                var xr = xp.unsafe_offset(m * depth)
                var b0 = SIMD[DType.float32, width](0)
                var b1 = SIMD[DType.float32, width](0)
                var b2 = SIMD[DType.float32, width](0)
                var b3 = SIMD[DType.float32, width](0)
                for k in range(0, depth, width):
                    var u = xr.unsafe_offset(k).unsafe_load[width=width]()
                    b0 += w0.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                    b1 += w1.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                    b2 += w2.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                    b3 += w3.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * u
                var o = op.unsafe_offset(m * cols + n)
                o.unsafe_store(b0.reduce_add())
                o.unsafe_offset(1).unsafe_store(b1.reduce_add())
                o.unsafe_offset(2).unsafe_store(b2.reduce_add())
                o.unsafe_offset(3).unsafe_store(b3.reduce_add())
            n += 4
        while n < end:
            var w0 = wp.unsafe_offset(n * depth)
            for m in range(rows):
                var xr = xp.unsafe_offset(m * depth)
                var b0 = SIMD[DType.float32, width](0)
                for k in range(0, depth, width):
                    b0 += w0.unsafe_offset(k).unsafe_load[width=width]().cast[
                        DType.float32
                    ]() * xr.unsafe_offset(k).unsafe_load[width=width]()
                op.unsafe_offset(m * cols + n).unsafe_store(b0.reduce_add())
            n += 1

    def work(c: Int) {imm}:
        var start = c * chunk
        var end = min(start + chunk, cols)
        products(start, end)
        comptime if biased:  # the task's columns, still in cache
            for m in range(rows):
                var o = op.unsafe_offset(m * cols)
                var r = rp.unsafe_offset(m * cols)
                var n = start
                while n + width <= end:
                    var v = o.unsafe_offset(n).unsafe_load[width=width]()
                    comptime if scaled:
                        v = v * sp.unsafe_offset(n).unsafe_load[width=width]()
                    v = v + bp.unsafe_offset(n).unsafe_load[width=width]()
                    comptime if gelu:
                        v = exact_gelu[width](v)
                    comptime if add:
                        v = r.unsafe_offset(n).unsafe_load[width=width]() + v
                    o.unsafe_offset(n).unsafe_store(v)
                    n += width
                while n < end:
                    var v = o.unsafe_offset(n).unsafe_load()
                    comptime if scaled:
                        v = v * sp.unsafe_offset(n).unsafe_load()
                    v = v + bp.unsafe_offset(n).unsafe_load()
                    comptime if gelu:
                        v = exact_gelu[1](v)
                    comptime if add:
                        v = r.unsafe_offset(n).unsafe_load() + v
                    o.unsafe_offset(n).unsafe_store(v)
                    n += 1

    sync_parallelize(work, n_chunks)


@always_inline
def exact_gelu[w: Int](v: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    return v * 0.5 * (1 + erf(v * 0.7071067811865476))  # Whisper's (erf) GELU


@always_inline
def layer_norm(
    dst: Pointer[Float32, MutUntrackedOrigin],
    x: Pointer[Float32, MutAnyOrigin],
    gamma: Pointer[Float32, MutAnyOrigin],
    beta: Pointer[Float32, MutAnyOrigin],
    rows: Int,
    depth: Int,
    eps: Float32,
):
    # dst[m] = (x[m] - mean) / sqrt(var + eps) * gamma + beta, row by row (depth: a multiple of 8)
    comptime width = 8
    for m in range(rows):
        var xr = x.unsafe_offset(m * depth)
        var o = dst.unsafe_offset(m * depth)
        var total = SIMD[DType.float32, width](0)
        for k in range(0, depth, width):
            total += xr.unsafe_offset(k).unsafe_load[width=width]()
        var mean = total.reduce_add() / Float32(depth)
        var sq = SIMD[DType.float32, width](0)
        for k in range(0, depth, width):
            var c = xr.unsafe_offset(k).unsafe_load[width=width]() - mean
            sq += c * c
        var std = sqrt(sq.reduce_add() / Float32(depth) + eps)
        for k in range(0, depth, width):
            var c = xr.unsafe_offset(k).unsafe_load[width=width]() - mean
            o.unsafe_offset(k).unsafe_store(
                c / std * gamma.unsafe_offset(k).unsafe_load[width=width]()
                + beta.unsafe_offset(k).unsafe_load[width=width]()
            )


@extensibility.register("half_weight_gemv")
struct HalfWeightGemv:
    # x @ w.T
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.float16, rank=2, ...],
    ) raises:
        project[False, False, False, False, False](output, x, w, x, x, x, x, x)  # x: unread


@extensibility.register("norm_half_gemv")
struct NormHalfGemv:
    # layer_norm(x) @ w.T
    @staticmethod
    def execute[
        target: StaticString, eps: Float32
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        gamma: InputTensor[dtype=DType.float32, rank=1, ...],
        beta: InputTensor[dtype=DType.float32, rank=1, ...],
        w: InputTensor[dtype=DType.float16, rank=2, ...],
    ) raises:
        project[True, False, False, False, False, eps](output, x, w, gamma, beta, x, x, x)


@extensibility.register("norm_half_projection")
struct NormHalfProjection:
    # (layer_norm(x) @ w.T) * scale + bias, then GELU where `gelu`
    @staticmethod
    def execute[
        target: StaticString, gelu: Bool, eps: Float32
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        gamma: InputTensor[dtype=DType.float32, rank=1, ...],
        beta: InputTensor[dtype=DType.float32, rank=1, ...],
        w: InputTensor[dtype=DType.float16, rank=2, ...],
        scale: InputTensor[dtype=DType.float32, rank=1, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
    ) raises:
        project[True, True, True, gelu, False, eps](output, x, w, gamma, beta, scale, bias, x)


@extensibility.register("half_projection_add")
struct HalfProjectionAdd:
    # residual + (x @ w.T + bias)
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.float16, rank=2, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        residual: InputTensor[dtype=DType.float32, rank=2, ...],
    ) raises:
        project[False, False, True, False, True](output, x, w, x, x, x, bias, residual)


@always_inline
def fetch_line(p: Pointer[Float16, MutAnyOrigin], streaming: Bool):
    # one 64-byte line requested ahead of its use (prefetchnta when streaming, else prefetcht2)
    if streaming:
        prefetch[PrefetchOptions().for_read().no_locality().to_data_cache()](p)
    else:
        prefetch[PrefetchOptions().for_read().low_locality().to_data_cache()](p)
