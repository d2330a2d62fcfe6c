# A step's new keys and values written into a layer's KV cache in place, read straight from the
# fused q|k|v projection's rows: K [S, H, hd, cap] (position c of slot s, head h in column c of its
# hd rows) and V [S, H, cap, hd]. Row r's new position p goes to slot history[r, p]: the host gives
# every row of a step its own slot, so no two rows write the same place, and a position once
# written is never written again (the rows that share it read it through their histories).
import extensibility
from extensibility import InputTensor, _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize


@extensibility.register("store_kv")
struct StoreKV:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        cache_k: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        cache_v: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        qkv: InputTensor[dtype=DType.float32, rank=3, ...],
        history: InputTensor[dtype=DType.int64, rank=2, ...],
    ) raises:
        # qkv [R, n, 3 H hd] (q | k | v), history [R, P + n]: the new positions are P .. P + n - 1
        var slots = cache_k.dim_size(0)
        var heads = cache_k.dim_size(1)
        var hd = cache_k.dim_size(2)
        var cap = cache_k.dim_size(3)
        var rows = qkv.dim_size(0)
        var new = qkv.dim_size(1)
        var width = qkv.dim_size(2)
        var total = history.dim_size(1)
        var past = total - new
        var d = heads * hd
        if width != 3 * d:
            raise Error("store_kv: the projection's rows must be q, k and v of every head")
        if history.dim_size(0) != rows or past < 0 or total > cap:
            raise Error("store_kv: the history does not fit the projection or the cache")
        var hp = history.unsafe_ptr()
        for r in range(rows):
            for t in range(past, total):
                var s = Int(hp.unsafe_offset(r * total + t).unsafe_load())
                if s < 0 or s >= slots:
                    raise Error("store_kv: a history names a slot outside the cache")
        var qp = qkv.unsafe_ptr()
        var kp = cache_k.unsafe_ptr()
        var vp = cache_v.unsafe_ptr()

        def work(task: Int) {imm}:
            var r = task // heads
            var h = task % heads
            for t in range(new):
                var s = Int(hp.unsafe_offset(r * total + past + t).unsafe_load())
                var src = qp.unsafe_offset((r * new + t) * width + h * hd)
                var kh = kp.unsafe_offset((s * heads + h) * hd * cap + past + t)
                for i in range(hd):
                    kh.unsafe_offset(i * cap).unsafe_store(src.unsafe_offset(d + i).unsafe_load())
                var vh = vp.unsafe_offset(((s * heads + h) * cap + past + t) * hd)
                for i in range(hd):
                    vh.unsafe_offset(i).unsafe_store(src.unsafe_offset(2 * d + i).unsafe_load())

        sync_parallelize(work, rows * heads)
