# out[r, :] = x[r, :] followed by y[r, :]: a KV cache grown by the new positions. MAX's concat
# moves these rows element by element; a step copies the whole cache, so here each row is one
# block copy.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize


@extensibility.register("append_columns")
struct AppendColumns:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        y: InputTensor[dtype=DType.float32, rank=2, ...],
    ) raises:
        var rows = x.dim_size(0)
        var a = x.dim_size(1)
        var b = y.dim_size(1)
        var xp = x.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var op = output.unsafe_ptr()
        comptime width = 16
        # about 64 KiB per task: enough to amortise a task, small enough to share the cores
        var per_task = max(1, 16384 // max(1, a + b))
        var n_tasks = (rows + per_task - 1) // per_task

        def work(t: Int) {imm}:
            for r in range(t * per_task, min((t + 1) * per_task, rows)):
                var o = op.unsafe_offset(r * (a + b))
                var s = xp.unsafe_offset(r * a)
                var i = 0
                while i + width <= a:
                    o.unsafe_offset(i).unsafe_store(s.unsafe_offset(i).unsafe_load[width=width]())
                    i += width
                while i < a:
                    o.unsafe_offset(i).unsafe_store(s.unsafe_offset(i).unsafe_load())
                    i += 1
                o = o.unsafe_offset(a)
                s = yp.unsafe_offset(r * b)
                i = 0
                while i + width <= b:
                    o.unsafe_offset(i).unsafe_store(s.unsafe_offset(i).unsafe_load[width=width]())
                    i += width
                while i < b:
                    o.unsafe_offset(i).unsafe_store(s.unsafe_offset(i).unsafe_load())
                    i += 1

        sync_parallelize(work, n_tasks)
