# out[m, n] = sum_k x[m, k] * w[n, k]: float32 activations against a float16 weight stored row by
# row ([out, in]), accumulated in float32. A decoder step multiplies a few rows by a large weight, so
# its time is the weight's read: half the bytes, about half the time. Every float16 value is exact
# in float32, so the products are those of the float32 weight; only the order of the sums differs,
# as between any two float32 kernels.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize


@extensibility.register("half_weight_gemv")
struct HalfWeightGemv:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.float16, rank=2, ...],
    ) raises:
        var rows = x.dim_size(0)
        var depth = x.dim_size(1)  # a multiple of `width` (checked when the graph is built)
        var cols = w.dim_size(0)
        var xp = x.unsafe_ptr()
        var wp = w.unsafe_ptr()
        var op = output.unsafe_ptr()
        comptime width = 16
        comptime tile = 4  # weight rows per pass: four independent sums, each x load used 4 times
        comptime chunk = 512  # weight rows per task
        var n_chunks = (cols + chunk - 1) // chunk

        def work(c: Int) {imm}:
            var start = c * chunk
            var end = min(start + chunk, cols)
            var n = start
            while n + tile <= end:
                var w0 = wp.unsafe_offset(n * depth)
                var w1 = wp.unsafe_offset((n + 1) * depth)
                var w2 = wp.unsafe_offset((n + 2) * depth)
                var w3 = wp.unsafe_offset((n + 3) * depth)
                for m in range(rows):
                    var xr = xp.unsafe_offset(m * depth)
                    var a0 = SIMD[DType.float32, width](0)
                    var a1 = SIMD[DType.float32, width](0)
                    var a2 = SIMD[DType.float32, width](0)
                    var a3 = SIMD[DType.float32, width](0)
                    for k in range(0, depth, width):
                        var xv = xr.unsafe_offset(k).unsafe_load[width=width]()
                        a0 += w0.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * xv
                        a1 += w1.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * xv
                        a2 += w2.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * xv
                        a3 += w3.unsafe_offset(k).unsafe_load[width=width]().cast[DType.float32]() * xv
                    var o = op.unsafe_offset(m * cols + n)
                    o.unsafe_store(a0.reduce_add())
                    o.unsafe_offset(1).unsafe_store(a1.reduce_add())
                    o.unsafe_offset(2).unsafe_store(a2.reduce_add())
                    o.unsafe_offset(3).unsafe_store(a3.reduce_add())
                n += tile
            while n < end:
                var w0 = wp.unsafe_offset(n * depth)
                for m in range(rows):
                    var xr = xp.unsafe_offset(m * depth)
                    var a0 = SIMD[DType.float32, width](0)
                    for k in range(0, depth, width):
                        a0 += w0.unsafe_offset(k).unsafe_load[width=width]().cast[
                            DType.float32
                        ]() * xr.unsafe_offset(k).unsafe_load[width=width]()
                    op.unsafe_offset(m * cols + n).unsafe_store(a0.reduce_add())
                n += 1

        sync_parallelize(work, n_chunks)
