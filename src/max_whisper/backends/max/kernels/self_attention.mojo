# softmax(q kᵀ) v per head for a whole window (the encoder's self-attention), read straight from the
# fused projection's rows and written in the layout the output projection reads: no permuted copies.
# A task is one head and one tile of 2 vectors of queries; the tile's scores, one row of 2 vectors
# per key, stay in cache (not a [heads, ctx, ctx] tensor in memory), and the softmax runs across
# vectors. Both products are register-tiled: a few keys (or value columns) broadcast against the
# tile's queries.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from std.memory import alloc, stack_allocation
from std.math import exp
from std.sys import simd_width_of

comptime HEAD_SIZE = 64  # every Whisper model's
# sums over the keys run in blocks, each block's sum then added to the total: one running sum over
# 1500 keys drifts several times further from the exact result than PyTorch's blocked GEMM sums
comptime KEY_BLOCK = 64


@extensibility.register("self_attention")
struct SelfAttention:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=4, ...],
        qkv: InputTensor[dtype=DType.float32, rank=5, ...],
    ) raises:
        # qkv [A, T, 3, H, hd] (q's scale already in it) -> output [A, T, H, hd]
        var batch = qkv.dim_size(0)
        var ctx = qkv.dim_size(1)
        var heads = qkv.dim_size(3)
        if qkv.dim_size(4) != HEAD_SIZE:
            raise Error("self_attention: needs heads of 64")
        comptime hd = HEAD_SIZE
        comptime w = simd_width_of[DType.float32]()
        comptime tile = 2 * w  # queries per task
        var d_model = heads * hd
        var row = 3 * d_model  # floats from one position's projections to the next's
        var tiles = (ctx + tile - 1) // tile
        var qkvp = qkv.unsafe_ptr()
        var op = output.unsafe_ptr()

        def work(task: Int) {imm}:
            var a = task // (heads * tiles)
            var h = (task // tiles) % heads
            var t0 = (task % tiles) * tile
            var n = min(tile, ctx - t0)
            var base = qkvp.unsafe_offset(a * ctx * row + h * hd)
            var kp = base.unsafe_offset(d_model)
            var vp = base.unsafe_offset(2 * d_model)

            # the tile's queries transposed: qt[d] holds feature d of each query (0 past the end)
            var qt = stack_allocation[hd * tile, Float32]()
            for d in range(hd):
                for r in range(tile):
                    var value = Float32(0)
                    if r < n:
                        value = base.unsafe_offset((t0 + r) * row + d).unsafe_load()
                    qt.unsafe_offset(d * tile + r).unsafe_store(value)

            # scores: st[c] holds key c's score against each query of the tile
            var st = alloc[Float32](ctx * tile)
            var c = 0
            while c + 6 <= ctx:
                var a0 = SIMD[DType.float32, w](0)
                var b0 = SIMD[DType.float32, w](0)
                var a1 = SIMD[DType.float32, w](0)
                var b1 = SIMD[DType.float32, w](0)
                var a2 = SIMD[DType.float32, w](0)
                var b2 = SIMD[DType.float32, w](0)
                var a3 = SIMD[DType.float32, w](0)
                var b3 = SIMD[DType.float32, w](0)
                var a4 = SIMD[DType.float32, w](0)
                var b4 = SIMD[DType.float32, w](0)
                var a5 = SIMD[DType.float32, w](0)
                var b5 = SIMD[DType.float32, w](0)
                var k0 = kp.unsafe_offset(c * row)
                for d in range(hd):
                    var lo = qt.unsafe_offset(d * tile).unsafe_load[width=w]()
                    var hi = qt.unsafe_offset(d * tile + w).unsafe_load[width=w]()
                    var kd = k0.unsafe_offset(d)
                    var x0 = SIMD[DType.float32, w](kd.unsafe_load())
                    var x1 = SIMD[DType.float32, w](kd.unsafe_offset(row).unsafe_load())
                    var x2 = SIMD[DType.float32, w](kd.unsafe_offset(2 * row).unsafe_load())
                    var x3 = SIMD[DType.float32, w](kd.unsafe_offset(3 * row).unsafe_load())
                    var x4 = SIMD[DType.float32, w](kd.unsafe_offset(4 * row).unsafe_load())
                    var x5 = SIMD[DType.float32, w](kd.unsafe_offset(5 * row).unsafe_load())
                    a0 = x0.fma(lo, a0)
                    b0 = x0.fma(hi, b0)
                    a1 = x1.fma(lo, a1)
                    b1 = x1.fma(hi, b1)
                    a2 = x2.fma(lo, a2)
                    b2 = x2.fma(hi, b2)
                    a3 = x3.fma(lo, a3)
                    b3 = x3.fma(hi, b3)
                    a4 = x4.fma(lo, a4)
                    b4 = x4.fma(hi, b4)
                    a5 = x5.fma(lo, a5)
                    b5 = x5.fma(hi, b5)
                var s = st.unsafe_offset(c * tile)
                s.unsafe_store(a0)
                s.unsafe_offset(w).unsafe_store(b0)
                s.unsafe_offset(tile).unsafe_store(a1)
                s.unsafe_offset(tile + w).unsafe_store(b1)
                s.unsafe_offset(2 * tile).unsafe_store(a2)
                s.unsafe_offset(2 * tile + w).unsafe_store(b2)
                s.unsafe_offset(3 * tile).unsafe_store(a3)
                s.unsafe_offset(3 * tile + w).unsafe_store(b3)
                s.unsafe_offset(4 * tile).unsafe_store(a4)
                s.unsafe_offset(4 * tile + w).unsafe_store(b4)
                s.unsafe_offset(5 * tile).unsafe_store(a5)
                s.unsafe_offset(5 * tile + w).unsafe_store(b5)
                c += 6
            while c < ctx:
                var a0 = SIMD[DType.float32, w](0)
                var b0 = SIMD[DType.float32, w](0)
                var kd = kp.unsafe_offset(c * row)
                for d in range(hd):
                    var x0 = SIMD[DType.float32, w](kd.unsafe_offset(d).unsafe_load())
                    a0 += x0 * qt.unsafe_offset(d * tile).unsafe_load[width=w]()
                    b0 += x0 * qt.unsafe_offset(d * tile + w).unsafe_load[width=w]()
                st.unsafe_offset(c * tile).unsafe_store(a0)
                st.unsafe_offset(c * tile + w).unsafe_store(b0)
                c += 1

            # softmax over the keys, each lane a query: exponentials in place, their sums kept
            var top_lo = st.unsafe_load[width=w]()
            var top_hi = st.unsafe_offset(w).unsafe_load[width=w]()
            for c in range(1, ctx):
                top_lo = max(top_lo, st.unsafe_offset(c * tile).unsafe_load[width=w]())
                top_hi = max(top_hi, st.unsafe_offset(c * tile + w).unsafe_load[width=w]())
            var sum_lo = SIMD[DType.float32, w](0)
            var sum_hi = SIMD[DType.float32, w](0)
            var k0 = 0
            while k0 < ctx:
                var k1 = min(k0 + KEY_BLOCK, ctx)
                var block_lo = SIMD[DType.float32, w](0)
                var block_hi = SIMD[DType.float32, w](0)
                for c in range(k0, k1):
                    var s = st.unsafe_offset(c * tile)
                    var e_lo = exp(s.unsafe_load[width=w]() - top_lo)
                    var e_hi = exp(s.unsafe_offset(w).unsafe_load[width=w]() - top_hi)
                    s.unsafe_store(e_lo)
                    s.unsafe_offset(w).unsafe_store(e_hi)
                    block_lo += e_lo
                    block_hi += e_hi
                sum_lo += block_lo
                sum_hi += block_hi
                k0 = k1
            var inv_lo = 1 / sum_lo
            var inv_hi = 1 / sum_hi
            for c in range(ctx):
                var s = st.unsafe_offset(c * tile)
                s.unsafe_store(s.unsafe_load[width=w]() * inv_lo)
                s.unsafe_offset(w).unsafe_store(s.unsafe_offset(w).unsafe_load[width=w]() * inv_hi)

            # out = p v, four value columns at a time against the tile's queries
            var j = 0
            while j < hd:
                var oa0 = SIMD[DType.float32, w](0)
                var ob0 = SIMD[DType.float32, w](0)
                var oa1 = SIMD[DType.float32, w](0)
                var ob1 = SIMD[DType.float32, w](0)
                var oa2 = SIMD[DType.float32, w](0)
                var ob2 = SIMD[DType.float32, w](0)
                var oa3 = SIMD[DType.float32, w](0)
                var ob3 = SIMD[DType.float32, w](0)
                var k0 = 0
                while k0 < ctx:
                    var k1 = min(k0 + KEY_BLOCK, ctx)
                    var a0 = SIMD[DType.float32, w](0)
                    var b0 = SIMD[DType.float32, w](0)
                    var a1 = SIMD[DType.float32, w](0)
                    var b1 = SIMD[DType.float32, w](0)
                    var a2 = SIMD[DType.float32, w](0)
                    var b2 = SIMD[DType.float32, w](0)
                    var a3 = SIMD[DType.float32, w](0)
                    var b3 = SIMD[DType.float32, w](0)
                    for c in range(k0, k1):
                        var lo = st.unsafe_offset(c * tile).unsafe_load[width=w]()
                        var hi = st.unsafe_offset(c * tile + w).unsafe_load[width=w]()
                        var vc = vp.unsafe_offset(c * row + j)
                        var x0 = SIMD[DType.float32, w](vc.unsafe_load())
                        var x1 = SIMD[DType.float32, w](vc.unsafe_offset(1).unsafe_load())
                        var x2 = SIMD[DType.float32, w](vc.unsafe_offset(2).unsafe_load())
                        var x3 = SIMD[DType.float32, w](vc.unsafe_offset(3).unsafe_load())
                        a0 = x0.fma(lo, a0)
                        b0 = x0.fma(hi, b0)
                        a1 = x1.fma(lo, a1)
                        b1 = x1.fma(hi, b1)
                        a2 = x2.fma(lo, a2)
                        b2 = x2.fma(hi, b2)
                        a3 = x3.fma(lo, a3)
                        b3 = x3.fma(hi, b3)
                    oa0 += a0
                    ob0 += b0
                    oa1 += a1
                    ob1 += b1
                    oa2 += a2
                    ob2 += b2
                    oa3 += a3
                    ob3 += b3
                    k0 = k1
                for r in range(n):
                    var o = op.unsafe_offset(((a * ctx + t0 + r) * heads + h) * hd + j)
                    if r < w:
                        o.unsafe_store(oa0[r])
                        o.unsafe_offset(1).unsafe_store(oa1[r])
                        o.unsafe_offset(2).unsafe_store(oa2[r])
                        o.unsafe_offset(3).unsafe_store(oa3[r])
                    else:
                        o.unsafe_store(ob0[r - w])
                        o.unsafe_offset(1).unsafe_store(ob1[r - w])
                        o.unsafe_offset(2).unsafe_store(ob2[r - w])
                        o.unsafe_offset(3).unsafe_store(ob3[r - w])
                j += 4
            st.free()

        sync_parallelize(work, batch * heads * tiles)
