# softmax(q k + mask) v for a few queries per head: a decoder step's cross-attention (the window's
# K [hd, ctx] and V [ctx, hd], no mask) and its self-attention (the KV cache, with the step's causal
# and padding mask). The cross-attention is the step's largest read (all layers' K/V are more bytes
# than its weights); MAX's batched matmuls on one query row read K and V at a fraction of the
# memory's speed, and for the cache they gather a strided operand. Here each head is one task: its
# scores stay in a stack buffer, K and V stream once from memory (then from cache for the head's
# other queries). Queries are read from the projection's rows, and the output is written in rows,
# as the next projection reads it: no permuted copies on either side.
#
# The self-attention's cache (on a CPU) is written in place (slot_cache.mojo): K [S, H, hd, cap] and
# V [S, H, cap, hd], S slots of `cap` positions. Each row reads its past through its history, the
# slot each of its positions was written in: a beam search's rows share their common past and no
# step copies it. The history is made of runs of one slot; each run is read as the window's K/V is.
import extensibility
from extensibility import InputTensor, OutputTensor, _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize
from std.memory import stack_allocation
from std.math import exp
from std.sys import simd_width_of

comptime MAX_CTX = 1536  # the scores buffer: Whisper's audio context is 1500
comptime HEAD_SIZE = 64  # every Whisper model's
comptime W = simd_width_of[DType.float32]()


@always_inline
def add_scores(
    sp: Pointer[Float32, MutUntrackedOrigin],
    qrow: Pointer[Float32, MutAnyOrigin],
    k: Pointer[Float32, MutAnyOrigin],
    stride: Int,
    begin: Int,
    end: Int,
):
    # sp[c] += sum_d q[d] k[d stride + c] for c in [begin, end): K streamed row by row (one row per
    # feature)
    for d in range(HEAD_SIZE):
        var qd = SIMD[DType.float32, W](qrow.unsafe_offset(d).unsafe_load())
        var krow = k.unsafe_offset(d * stride)
        var c = begin
        while c + W <= end:
            var s = sp.unsafe_offset(c)
            s.unsafe_store(
                s.unsafe_load[width=W]() + qd * krow.unsafe_offset(c).unsafe_load[width=W]()
            )
            c += W
        while c < end:
            var s = sp.unsafe_offset(c)
            s.unsafe_store(s.unsafe_load() + qd[0] * krow.unsafe_offset(c).unsafe_load())
            c += 1


@always_inline
def start_scores(
    sp: Pointer[Float32, MutUntrackedOrigin], mrow: Pointer[Float32, MutAnyOrigin], ctx: Int, masked: Bool
):
    for c in range(ctx):
        sp.unsafe_offset(c).unsafe_store(mrow.unsafe_offset(c).unsafe_load() if masked else Float32(0))


@always_inline
def softmax_in_place(sp: Pointer[Float32, MutUntrackedOrigin], ctx: Int) -> Float32:
    # sp[c] = exp(sp[c] - max); returns 1 / their sum (vectors, then the tail)
    var top_v = SIMD[DType.float32, W](sp.unsafe_load())
    var c = 0
    while c + W <= ctx:
        top_v = max(top_v, sp.unsafe_offset(c).unsafe_load[width=W]())
        c += W
    var top = top_v.reduce_max()
    while c < ctx:
        top = max(top, sp.unsafe_offset(c).unsafe_load())
        c += 1
    var total_v = SIMD[DType.float32, W](0)
    c = 0
    while c + W <= ctx:
        var e = exp(sp.unsafe_offset(c).unsafe_load[width=W]() - top)
        sp.unsafe_offset(c).unsafe_store(e)
        total_v += e
        c += W
    var total = total_v.reduce_add()
    while c < ctx:
        var e = exp(sp.unsafe_offset(c).unsafe_load() - top)
        sp.unsafe_offset(c).unsafe_store(e)
        total += e
        c += 1
    return 1 / total


@always_inline
def add_values(
    acc: SIMD[DType.float32, HEAD_SIZE],
    sp: Pointer[Float32, MutUntrackedOrigin],
    v: Pointer[Float32, MutAnyOrigin],
    begin: Int,
    end: Int,
) -> SIMD[DType.float32, HEAD_SIZE]:
    # acc + sum_c p[c] v[c hd ..], V streamed position by position
    var out = acc
    for i in range(begin, end):
        out += sp.unsafe_offset(i).unsafe_load() * v.unsafe_offset(i * HEAD_SIZE).unsafe_load[
            width=HEAD_SIZE
        ]()
    return out


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

    def work(head: Int) {imm}:
        var sp = stack_allocation[MAX_CTX, Float32]()
        var kh = kp.unsafe_offset(head * hd * ctx)
        var vh = vp.unsafe_offset(head * ctx * hd)
        var b = head // heads_per_row
        var h = head % heads_per_row
        for m in range(queries):
            var qrow = qp.unsafe_offset((b * queries + m) * row + h * hd)
            start_scores(sp, mp.unsafe_offset((b * queries + m) * ctx), ctx, masked)
            add_scores(sp, qrow, kh, ctx, 0, ctx)
            var scale = softmax_in_place(sp, ctx)
            var acc = add_values(SIMD[DType.float32, HEAD_SIZE](0), sp, vh, 0, ctx)
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


@extensibility.register("slot_attention")
struct SlotAttention:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        cache_k: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        cache_v: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        history: InputTensor[dtype=DType.int64, rank=2, ...],
        mask: InputTensor[dtype=DType.float32, rank=4, ...],
    ) raises:
        # q [R, M, W] (as attend's), cache_k [S, H, hd, cap], cache_v [S, H, cap, hd], history
        # [R, T] (the slot of each of row r's T positions), mask [R, 1, M, T] -> output [R, M, H hd]
        var rows = history.dim_size(0)
        var ctx = history.dim_size(1)
        var slots = cache_k.dim_size(0)
        var heads_per_row = cache_k.dim_size(1)
        var cap = cache_k.dim_size(3)
        var queries = q.dim_size(1)
        var row = q.dim_size(2)
        if cache_k.dim_size(2) != HEAD_SIZE or ctx > MAX_CTX or ctx > cap:
            raise Error("slot attention: needs heads of 64 and a history within the cache")
        if row < heads_per_row * HEAD_SIZE or q.dim_size(0) != rows:
            raise Error("slot attention: the query rows do not fit the cache")
        var hp = history.unsafe_ptr()
        for i in range(rows * ctx):
            var s = Int(hp.unsafe_offset(i).unsafe_load())
            if s < 0 or s >= slots:
                raise Error("slot attention: a history names a slot outside the cache")
        var qp = q.unsafe_ptr()
        var kp = cache_k.unsafe_ptr()
        var vp = cache_v.unsafe_ptr()
        var mp = mask.unsafe_ptr()
        var op = output.unsafe_ptr()

        def work(task: Int) {imm}:
            var sp = stack_allocation[MAX_CTX, Float32]()
            var r = task // heads_per_row
            var h = task % heads_per_row
            var past = hp.unsafe_offset(r * ctx)
            for m in range(queries):
                var qrow = qp.unsafe_offset((r * queries + m) * row + h * HEAD_SIZE)
                start_scores(sp, mp.unsafe_offset((r * queries + m) * ctx), ctx, True)
                var begin = 0
                while begin < ctx:  # each run of one slot
                    var s = Int(past.unsafe_offset(begin).unsafe_load())
                    var end = begin + 1
                    while end < ctx and Int(past.unsafe_offset(end).unsafe_load()) == s:
                        end += 1
                    var kh = kp.unsafe_offset((s * heads_per_row + h) * HEAD_SIZE * cap)
                    add_scores(sp, qrow, kh, cap, begin, end)
                    begin = end
                var scale = softmax_in_place(sp, ctx)
                var acc = SIMD[DType.float32, HEAD_SIZE](0)
                begin = 0
                while begin < ctx:
                    var s = Int(past.unsafe_offset(begin).unsafe_load())
                    var end = begin + 1
                    while end < ctx and Int(past.unsafe_offset(end).unsafe_load()) == s:
                        end += 1
                    var vh = vp.unsafe_offset((s * heads_per_row + h) * cap * HEAD_SIZE)
                    acc = add_values(acc, sp, vh, begin, end)
                    begin = end
                op.unsafe_offset(((r * queries + m) * heads_per_row + h) * HEAD_SIZE).unsafe_store(
                    acc * scale
                )

        sync_parallelize(work, rows * heads_per_row)
