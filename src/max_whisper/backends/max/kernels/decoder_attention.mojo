# softmax(q k + mask) v for a few queries per head, against K [hd, ctx] and V [ctx, hd]: a decoder
# step's cross-attention (the window's K/V, no mask) and its self-attention (the KV cache, with the
# step's causal and padding mask). The cross-attention is the step's largest read (all layers' K/V
# are more bytes than its weights); MAX's batched matmuls on one query row read K and V at a
# fraction of the memory's speed, and for the cache they gather a strided operand. Here each head
# is one task: its scores stay in a stack buffer, K and V stream once from memory (then from cache
# for the head's other queries). Queries are read from the projection's rows, and the output is
# written in rows, as the next projection reads it: no permuted copies on either side.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from std.memory import stack_allocation
from std.math import exp
from std.sys import simd_width_of

comptime MAX_CTX = 1536  # the scores buffer: Whisper's audio context is 1500
comptime HEAD_SIZE = 64  # every Whisper model's


@always_inline
def attend[
    masked: Bool
](
    output: OutputTensor[dtype=DType.float32, rank=3, ...],
    q: InputTensor[dtype=DType.float32, rank=3, ...],
    k: InputTensor[dtype=DType.float32, rank=4, ...],
    v: InputTensor[dtype=DType.float32, rank=4, ...],
    mask: InputTensor[dtype=DType.float32, rank=4, ...],
) raises:
    # q [B, M, W] (head h's query in columns h hd .. (h + 1) hd: a q projection's rows, or the
    # front of a fused q|k|v one's), k [B, H, hd, ctx], v [B, H, ctx, hd], mask [B, 1, M, ctx]
    # (added to every head's scores; read only when masked) -> output [B, M, H hd]
    var heads_per_row = k.dim_size(1)
    var heads = k.dim_size(0) * heads_per_row
    var queries = q.dim_size(1)
    var row = q.dim_size(2)
    var hd = k.dim_size(2)
    var ctx = k.dim_size(3)
    if ctx > MAX_CTX or hd != HEAD_SIZE:
        raise Error("decoder attention: needs a context of at most 1536 and heads of 64")
    if row < heads_per_row * hd:
        raise Error("decoder attention: the query rows are narrower than every head's queries")
    var qp = q.unsafe_ptr()
    var kp = k.unsafe_ptr()
    var vp = v.unsafe_ptr()
    var mp = mask.unsafe_ptr()
    var op = output.unsafe_ptr()
    comptime w = simd_width_of[DType.float32]()

    def work(head: Int) {imm}:
        var sp = stack_allocation[MAX_CTX, Float32]()
        var kh = kp.unsafe_offset(head * hd * ctx)
        var vh = vp.unsafe_offset(head * ctx * hd)
        var b = head // heads_per_row
        var h = head % heads_per_row
        for m in range(queries):
            var qrow = qp.unsafe_offset((b * queries + m) * row + h * hd)
            # scores = q . K (+ the mask's row), K streamed row by row (one row per feature)
            var c = 0
            if masked:
                var mrow = mp.unsafe_offset((b * queries + m) * ctx)
                while c < ctx:
                    sp.unsafe_offset(c).unsafe_store(mrow.unsafe_offset(c).unsafe_load())
                    c += 1
            else:
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
            op.unsafe_offset(((b * queries + m) * heads_per_row + h) * HEAD_SIZE).unsafe_store(
                acc * scale
            )

    sync_parallelize(work, heads)


@extensibility.register("cross_attention")
struct CrossAttention:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v: InputTensor[dtype=DType.float32, rank=4, ...],
    ) raises:
        attend[False](output, q, k, v, k)  # no mask: k stands in, unread


@extensibility.register("masked_attention")
struct MaskedAttention:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v: InputTensor[dtype=DType.float32, rank=4, ...],
        mask: InputTensor[dtype=DType.float32, rank=4, ...],
    ) raises:
        attend[True](output, q, k, v, mask)
