# A layer's KV cache grown by a step's new positions, read straight from the fused q|k|v
# projection's rows: K [hd, past] rows each extended by the new keys, V [past, hd] followed by the
# new values. Row r continues the past of row source[r] (beam search reorders its rows between
# steps: the copy a step makes anyway reorders them). One task per row and head; each run of the
# cache is one block copy (MAX's concat moves the elements one by one).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize


@extensibility.register("append_kv")
struct AppendKV:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        k_all: OutputTensor[dtype=DType.float32, rank=4, ...],
        v_all: OutputTensor[dtype=DType.float32, rank=4, ...],
        past_k: InputTensor[dtype=DType.float32, rank=4, ...],
        past_v: InputTensor[dtype=DType.float32, rank=4, ...],
        qkv: InputTensor[dtype=DType.float32, rank=3, ...],
        source: InputTensor[dtype=DType.int64, rank=1, ...],
    ) raises:
        # past_k [R, H, hd, P], past_v [R, H, P, hd], qkv [R, n, 3 H hd] (q | k | v), source [R]
        # -> k_all [R, H, hd, P + n], v_all [R, H, P + n, hd]
        var rows = past_k.dim_size(0)
        var heads = past_k.dim_size(1)
        var hd = past_k.dim_size(2)
        var past = past_k.dim_size(3)
        var new = qkv.dim_size(1)
        var width = qkv.dim_size(2)
        var total = past + new
        var d = heads * hd
        if width != 3 * d:
            raise Error("append_kv: the projection's rows must be q, k and v of every head")
        if source.dim_size(0) != rows or qkv.dim_size(0) != rows:
            raise Error("append_kv: the cache, the projection and the source rows differ in number")
        var sp = source.unsafe_ptr()
        for r in range(rows):
            var s = Int(sp.unsafe_offset(r).unsafe_load())
            if s < 0 or s >= rows:
                raise Error("append_kv: a source row is outside the cache")
        var pk = past_k.unsafe_ptr()
        var pv = past_v.unsafe_ptr()
        var qp = qkv.unsafe_ptr()
        var ok = k_all.unsafe_ptr()
        var ov = v_all.unsafe_ptr()

        def work(task: Int) {imm}:
            var r = task // heads
            var h = task % heads
            var new_rows = qp.unsafe_offset(r * new * width + h * hd)
            var past_task = Int(sp.unsafe_offset(r).unsafe_load()) * heads + h
            var dst = ok.unsafe_offset(task * hd * total)
            var src = pk.unsafe_offset(past_task * hd * past)
            for i in range(hd):
                copy(dst.unsafe_offset(i * total), src.unsafe_offset(i * past), past)
                for t in range(new):
                    dst.unsafe_offset(i * total + past + t).unsafe_store(
                        new_rows.unsafe_offset(t * width + d + i).unsafe_load()
                    )
            var vdst = ov.unsafe_offset(task * total * hd)
            copy(vdst, pv.unsafe_offset(past_task * past * hd), past * hd)
            for t in range(new):
                copy(vdst.unsafe_offset((past + t) * hd), new_rows.unsafe_offset(t * width + 2 * d), hd)

        sync_parallelize(work, rows * heads)


@always_inline
def copy(dst: Pointer[Float32, MutAnyOrigin], src: Pointer[Float32, MutAnyOrigin], count: Int):
    comptime width = 16
    var i = 0
    while i + width <= count:
        dst.unsafe_offset(i).unsafe_store(src.unsafe_offset(i).unsafe_load[width=width]())
        i += width
    while i < count:
        dst.unsafe_offset(i).unsafe_store(src.unsafe_offset(i).unsafe_load())
        i += 1
