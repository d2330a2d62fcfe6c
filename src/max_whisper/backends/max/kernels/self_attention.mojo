# softmax(q kᵀ) v per head for a whole window (the encoder's self-attention), read straight from the
# fused projection's rows and written in the layout the output projection reads: no permuted copies.
# A task is one head and a group of query tiles (2 vectors of queries each). It walks the keys in
# blocks, and each block, small enough to stay in cache, serves every tile of the group: a running
# maximum and sum per query rescale what the earlier blocks added (flash attention), so no scores
# for all the keys are kept. Both products are register-tiled: a few keys (or value columns)
# broadcast against a tile's queries, each lane a query.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from std.memory import bitcast, stack_allocation
from std.sys import simd_width_of
from std.utils.numerics import min_finite

comptime HEAD_SIZE = 64  # every Whisper model's
comptime KEY_BLOCK = 60  # keys a block: 1500 of them make 25 (and 6-key register tiles, 10)
comptime GROUP_TILES = 8  # query tiles a task: each key block is read from memory once for them


@always_inline
def exp_nonpositive[w: Int](x: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    # e^x for x <= 0 (a score minus its row's maximum): 2^n e^r with |r| <= ln2/2, e^r by a
    # degree-6 polynomial; no range checks past the clamp, which std.math's exp spends time on
    var y = max(x, SIMD[DType.float32, w](-87.0))
    var n = (y * 1.44269504088896341).__round__()
    var r = n.fma(SIMD[DType.float32, w](-0.693359375), y)
    r = n.fma(SIMD[DType.float32, w](2.12194440e-4), r)
    var p = SIMD[DType.float32, w](1.9875691500e-4)
    p = p.fma(r, 1.3981999507e-3)
    p = p.fma(r, 8.3334519073e-3)
    p = p.fma(r, 4.1665795894e-2)
    p = p.fma(r, 1.6666665459e-1)
    p = p.fma(r, 5.0000001201e-1)
    p = p.fma(r * r, r + 1)
    var scale = bitcast[DType.float32, w]((n.cast[DType.int32]() + 127) << 23)
    return p * scale


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
        comptime tile = 2 * w
        var d_model = heads * hd
        var row = 3 * d_model  # floats from one position's projections to the next's
        var tiles = (ctx + tile - 1) // tile
        var groups = (tiles + GROUP_TILES - 1) // GROUP_TILES
        var qkvp = qkv.unsafe_ptr()
        var op = output.unsafe_ptr()

        def work(task: Int) {imm}:
            var a = task // (heads * groups)
            var h = (task // groups) % heads
            var g0 = (task % groups) * GROUP_TILES
            var nt = min(GROUP_TILES, tiles - g0)
            var base = qkvp.unsafe_offset(a * ctx * row + h * hd)
            var kp = base.unsafe_offset(d_model)
            var vp = base.unsafe_offset(2 * d_model)

            # per tile: its queries transposed (qt[d] holds feature d of each query, 0 past the end),
            # the unnormalised output acc[j] (column j for each query), the running maximum and sum
            var qt = stack_allocation[GROUP_TILES * hd * tile, Float32]()
            var acc = stack_allocation[GROUP_TILES * hd * tile, Float32]()
            var top = stack_allocation[GROUP_TILES * tile, Float32]()
            var total = stack_allocation[GROUP_TILES * tile, Float32]()
            var st = stack_allocation[KEY_BLOCK * tile, Float32]()  # a block's scores, then weights
            for t in range(nt):
                var t0 = (g0 + t) * tile
                var q = qt.unsafe_offset(t * hd * tile)
                for d in range(hd):
                    for r in range(tile):
                        var value = Float32(0)
                        if t0 + r < ctx:
                            value = base.unsafe_offset((t0 + r) * row + d).unsafe_load()
                        q.unsafe_offset(d * tile + r).unsafe_store(value)
                for i in range(hd * tile):
                    acc.unsafe_offset(t * hd * tile + i).unsafe_store(0)
                for i in range(tile):
                    top.unsafe_offset(t * tile + i).unsafe_store(min_finite[DType.float32]())
                    total.unsafe_offset(t * tile + i).unsafe_store(0)

            var k0 = 0
            while k0 < ctx:
                var k1 = min(k0 + KEY_BLOCK, ctx)
                var nk = k1 - k0
                for t in range(nt):
                    # scores: st[c] holds key k0 + c's score against each query of the tile
                    var q = qt.unsafe_offset(t * hd * tile)
                    var c = 0
                    while c + 6 <= nk:
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
                        var kd = kp.unsafe_offset((k0 + c) * row)
                        for d in range(hd):
                            var lo = q.unsafe_offset(d * tile).unsafe_load[width=w]()
                            var hi = q.unsafe_offset(d * tile + w).unsafe_load[width=w]()
                            var x0 = SIMD[DType.float32, w](kd.unsafe_offset(d).unsafe_load())
                            var x1 = SIMD[DType.float32, w](kd.unsafe_offset(row + d).unsafe_load())
                            var x2 = SIMD[DType.float32, w](kd.unsafe_offset(2 * row + d).unsafe_load())
                            var x3 = SIMD[DType.float32, w](kd.unsafe_offset(3 * row + d).unsafe_load())
                            var x4 = SIMD[DType.float32, w](kd.unsafe_offset(4 * row + d).unsafe_load())
                            var x5 = SIMD[DType.float32, w](kd.unsafe_offset(5 * row + d).unsafe_load())
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
                    while c < nk:
                        var a0 = SIMD[DType.float32, w](0)
                        var b0 = SIMD[DType.float32, w](0)
                        var kd = kp.unsafe_offset((k0 + c) * row)
                        for d in range(hd):
                            var x0 = SIMD[DType.float32, w](kd.unsafe_offset(d).unsafe_load())
                            a0 = x0.fma(q.unsafe_offset(d * tile).unsafe_load[width=w](), a0)
                            b0 = x0.fma(q.unsafe_offset(d * tile + w).unsafe_load[width=w](), b0)
                        st.unsafe_offset(c * tile).unsafe_store(a0)
                        st.unsafe_offset(c * tile + w).unsafe_store(b0)
                        c += 1

                    # the new running maximum; what the earlier blocks added shrinks by e^(old - new)
                    var m = top.unsafe_offset(t * tile)
                    var old_lo = m.unsafe_load[width=w]()
                    var old_hi = m.unsafe_offset(w).unsafe_load[width=w]()
                    var new_lo = old_lo
                    var new_hi = old_hi
                    for c in range(nk):
                        new_lo = max(new_lo, st.unsafe_offset(c * tile).unsafe_load[width=w]())
                        new_hi = max(new_hi, st.unsafe_offset(c * tile + w).unsafe_load[width=w]())
                    m.unsafe_store(new_lo)
                    m.unsafe_offset(w).unsafe_store(new_hi)
                    var scale_lo = exp_nonpositive(old_lo - new_lo)
                    var scale_hi = exp_nonpositive(old_hi - new_hi)
                    var sum_lo = SIMD[DType.float32, w](0)
                    var sum_hi = SIMD[DType.float32, w](0)
                    for c in range(nk):
                        var s = st.unsafe_offset(c * tile)
                        var e_lo = exp_nonpositive(s.unsafe_load[width=w]() - new_lo)
                        var e_hi = exp_nonpositive(s.unsafe_offset(w).unsafe_load[width=w]() - new_hi)
                        s.unsafe_store(e_lo)
                        s.unsafe_offset(w).unsafe_store(e_hi)
                        sum_lo += e_lo
                        sum_hi += e_hi
                    var l = total.unsafe_offset(t * tile)
                    l.unsafe_store(l.unsafe_load[width=w]().fma(scale_lo, sum_lo))
                    l.unsafe_offset(w).unsafe_store(l.unsafe_offset(w).unsafe_load[width=w]().fma(scale_hi, sum_hi))

                    # acc = acc e^(old - new) + weights v, six value columns at a time, then four
                    var o = acc.unsafe_offset(t * hd * tile)
                    var j = 0
                    while j + 6 <= hd:
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
                        for c in range(nk):
                            var lo = st.unsafe_offset(c * tile).unsafe_load[width=w]()
                            var hi = st.unsafe_offset(c * tile + w).unsafe_load[width=w]()
                            var vc = vp.unsafe_offset((k0 + c) * row + j)
                            var x0 = SIMD[DType.float32, w](vc.unsafe_load())
                            var x1 = SIMD[DType.float32, w](vc.unsafe_offset(1).unsafe_load())
                            var x2 = SIMD[DType.float32, w](vc.unsafe_offset(2).unsafe_load())
                            var x3 = SIMD[DType.float32, w](vc.unsafe_offset(3).unsafe_load())
                            var x4 = SIMD[DType.float32, w](vc.unsafe_offset(4).unsafe_load())
                            var x5 = SIMD[DType.float32, w](vc.unsafe_offset(5).unsafe_load())
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
                        var oj = o.unsafe_offset(j * tile)
                        oj.unsafe_store(oj.unsafe_load[width=w]().fma(scale_lo, a0))
                        oj.unsafe_offset(w).unsafe_store(oj.unsafe_offset(w).unsafe_load[width=w]().fma(scale_hi, b0))
                        oj.unsafe_offset(tile).unsafe_store(oj.unsafe_offset(tile).unsafe_load[width=w]().fma(scale_lo, a1))
                        oj.unsafe_offset(tile + w).unsafe_store(oj.unsafe_offset(tile + w).unsafe_load[width=w]().fma(scale_hi, b1))
                        oj.unsafe_offset(2 * tile).unsafe_store(oj.unsafe_offset(2 * tile).unsafe_load[width=w]().fma(scale_lo, a2))
                        oj.unsafe_offset(2 * tile + w).unsafe_store(oj.unsafe_offset(2 * tile + w).unsafe_load[width=w]().fma(scale_hi, b2))
                        oj.unsafe_offset(3 * tile).unsafe_store(oj.unsafe_offset(3 * tile).unsafe_load[width=w]().fma(scale_lo, a3))
                        oj.unsafe_offset(3 * tile + w).unsafe_store(oj.unsafe_offset(3 * tile + w).unsafe_load[width=w]().fma(scale_hi, b3))
                        oj.unsafe_offset(4 * tile).unsafe_store(oj.unsafe_offset(4 * tile).unsafe_load[width=w]().fma(scale_lo, a4))
                        oj.unsafe_offset(4 * tile + w).unsafe_store(oj.unsafe_offset(4 * tile + w).unsafe_load[width=w]().fma(scale_hi, b4))
                        oj.unsafe_offset(5 * tile).unsafe_store(oj.unsafe_offset(5 * tile).unsafe_load[width=w]().fma(scale_lo, a5))
                        oj.unsafe_offset(5 * tile + w).unsafe_store(oj.unsafe_offset(5 * tile + w).unsafe_load[width=w]().fma(scale_hi, b5))
                        j += 6
                    while j < hd:
                        var a0 = SIMD[DType.float32, w](0)
                        var b0 = SIMD[DType.float32, w](0)
                        var a1 = SIMD[DType.float32, w](0)
                        var b1 = SIMD[DType.float32, w](0)
                        var a2 = SIMD[DType.float32, w](0)
                        var b2 = SIMD[DType.float32, w](0)
                        var a3 = SIMD[DType.float32, w](0)
                        var b3 = SIMD[DType.float32, w](0)
                        for c in range(nk):
                            var lo = st.unsafe_offset(c * tile).unsafe_load[width=w]()
                            var hi = st.unsafe_offset(c * tile + w).unsafe_load[width=w]()
                            var vc = vp.unsafe_offset((k0 + c) * row + j)
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
                        var oj = o.unsafe_offset(j * tile)
                        oj.unsafe_store(oj.unsafe_load[width=w]().fma(scale_lo, a0))
                        oj.unsafe_offset(w).unsafe_store(oj.unsafe_offset(w).unsafe_load[width=w]().fma(scale_hi, b0))
                        oj.unsafe_offset(tile).unsafe_store(oj.unsafe_offset(tile).unsafe_load[width=w]().fma(scale_lo, a1))
                        oj.unsafe_offset(tile + w).unsafe_store(oj.unsafe_offset(tile + w).unsafe_load[width=w]().fma(scale_hi, b1))
                        oj.unsafe_offset(2 * tile).unsafe_store(oj.unsafe_offset(2 * tile).unsafe_load[width=w]().fma(scale_lo, a2))
                        oj.unsafe_offset(2 * tile + w).unsafe_store(oj.unsafe_offset(2 * tile + w).unsafe_load[width=w]().fma(scale_hi, b2))
                        oj.unsafe_offset(3 * tile).unsafe_store(oj.unsafe_offset(3 * tile).unsafe_load[width=w]().fma(scale_lo, a3))
                        oj.unsafe_offset(3 * tile + w).unsafe_store(oj.unsafe_offset(3 * tile + w).unsafe_load[width=w]().fma(scale_hi, b3))
                        j += 4
                k0 = k1

            for t in range(nt):
                var t0 = (g0 + t) * tile
                var n = min(tile, ctx - t0)
                var o = acc.unsafe_offset(t * hd * tile)
                var inv_lo = 1 / total.unsafe_offset(t * tile).unsafe_load[width=w]()
                var inv_hi = 1 / total.unsafe_offset(t * tile + w).unsafe_load[width=w]()
                for j in range(hd):
                    var lo = o.unsafe_offset(j * tile).unsafe_load[width=w]() * inv_lo
                    var hi = o.unsafe_offset(j * tile + w).unsafe_load[width=w]() * inv_hi
                    for r in range(n):
                        var dst = op.unsafe_offset(((a * ctx + t0 + r) * heads + h) * hd + j)
                        if r < w:
                            dst.unsafe_store(lo[r])
                        else:
                            dst.unsafe_store(hi[r - w])

        sync_parallelize(work, batch * heads * groups)
