# softmax(q k) v for a few queries against a window's cross-attention K [hd, ctx] and V [ctx, hd],
# per head. A decoder step's cross-attention is this read of K and V (all layers: more bytes than
# the step's weights); MAX's batched matmuls on one query row read them at a fraction of the
# memory's speed. Here each head is one task: its scores stay in a stack buffer, K and V stream
# once from memory (then from cache for the head's other queries).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from std.memory import stack_allocation
from std.math import exp
from std.sys import simd_width_of

comptime MAX_CTX = 1536  # the scores buffer: Whisper's audio context is 1500
comptime HEAD_SIZE = 64  # every Whisper model's


@extensibility.register("cross_attention")
struct CrossAttention:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=DType.float32, rank=4, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v: InputTensor[dtype=DType.float32, rank=4, ...],
    ) raises:
        # q [A, H, M, hd], k [A, H, hd, ctx], v [A, H, ctx, hd] -> output [A, H, M, hd]
        var heads = q.dim_size(0) * q.dim_size(1)
        var queries = q.dim_size(2)
        var hd = q.dim_size(3)
        var ctx = k.dim_size(3)
        if ctx > MAX_CTX or hd != HEAD_SIZE:
            raise Error("cross_attention: needs a context of at most 1536 and heads of 64")
        var qp = q.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v.unsafe_ptr()
        var op = output.unsafe_ptr()
        comptime w = simd_width_of[DType.float32]()

        def work(head: Int) {imm}:
            var sp = stack_allocation[MAX_CTX, Float32]()
            var kh = kp.unsafe_offset(head * hd * ctx)
            var vh = vp.unsafe_offset(head * ctx * hd)
            for m in range(queries):
                var qrow = qp.unsafe_offset((head * queries + m) * hd)
                # scores = q . K, K streamed row by row (one row per feature)
                var c = 0
                while c < ctx:
                    sp.unsafe_offset(c).unsafe_store(Float32(0))
                    c += 1
                for d in range(hd):
                    var qd = SIMD[DType.float32, w](qrow.unsafe_offset(d).unsafe_load())
                    var krow = kh.unsafe_offset(d * ctx)
                    c = 0
                    while c + w <= ctx:
                        var s = sp.unsafe_offset(c)
                        s.unsafe_store(
                            s.unsafe_load[width=w]() + qd * krow.unsafe_offset(c).unsafe_load[width=w]()
                        )
                        c += w
                    while c < ctx:
                        var s = sp.unsafe_offset(c)
                        s.unsafe_store(s.unsafe_load() + qd[0] * krow.unsafe_offset(c).unsafe_load())
                        c += 1
                # softmax, in place (vectors, then the tail)
                var top_v = SIMD[DType.float32, w](sp.unsafe_load())
                c = 0
                while c + w <= ctx:
                    top_v = max(top_v, sp.unsafe_offset(c).unsafe_load[width=w]())
                    c += w
                var top = top_v.reduce_max()
                while c < ctx:
                    top = max(top, sp.unsafe_offset(c).unsafe_load())
                    c += 1
                var total_v = SIMD[DType.float32, w](0)
                c = 0
                while c + w <= ctx:
                    var e = exp(sp.unsafe_offset(c).unsafe_load[width=w]() - top)
                    sp.unsafe_offset(c).unsafe_store(e)
                    total_v += e
                    c += w
                var total = total_v.reduce_add()
                while c < ctx:
                    var e = exp(sp.unsafe_offset(c).unsafe_load() - top)
                    sp.unsafe_offset(c).unsafe_store(e)
                    total += e
                    c += 1
                var scale = 1 / total
                # out = p V, V streamed position by position
                var acc = SIMD[DType.float32, HEAD_SIZE](0)  # a few registers
                for i in range(ctx):
                    acc += sp.unsafe_offset(i).unsafe_load() * vh.unsafe_offset(
                        i * HEAD_SIZE
                    ).unsafe_load[width=HEAD_SIZE]()
                op.unsafe_offset((head * queries + m) * HEAD_SIZE).unsafe_store(acc * scale)

        sync_parallelize(work, heads)
