# out[m, :] = x[m, :] @ w + bias in float32, the weight laid out at load time in panels of 16
# columns ([N / 16, K, 16]: a panel's K rows contiguous, so a register tile streams it without
# strides that thrash the L1 sets). The register tile is 6 rows by 16 columns, 12 AVX2 accumulators
# fed by one broadcast of x and two loads of the panel per k. A task takes a block of rows small
# enough to stay in L2 and half of the panels, and sweeps them over it: a panel comes from L3 once
# per block, then from L1 for each of the block's tiles (MAX's own matmul stays well below the FMA
# units' rate on an AVX2 CPU for the encoder's shapes).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize

comptime PANEL = 16
comptime TILE_ROWS = 6
comptime PANEL_GROUPS = 2  # the panels split in two: a few rows still make two tasks
comptime ROW_BLOCK_FLOATS = 24576  # x floats a row block holds (96 KiB)


@extensibility.register("panel_matmul")
struct PanelMatmul:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
    ) raises:
        var rows = x.dim_size(0)
        var depth = x.dim_size(1)
        var panels = w.dim_size(0)
        var cols = panels * PANEL
        if w.dim_size(1) != depth or w.dim_size(2) != PANEL:
            raise Error("panel_matmul: the weight is not [N / 16, K, 16] for this x")
        var xp = x.unsafe_ptr()
        var wp = w.unsafe_ptr()
        var bp = bias.unsafe_ptr()
        var op = output.unsafe_ptr()
        comptime v = 8
        var block = TILE_ROWS * max(1, ROW_BLOCK_FLOATS // (TILE_ROWS * depth))
        var n_blocks = (rows + block - 1) // block
        var groups = PANEL_GROUPS if panels >= 2 * PANEL_GROUPS else 1
        var per_group = (panels + groups - 1) // groups

        def work(t: Int) {imm}:
            var r0 = (t // groups) * block
            var r1 = min(r0 + block, rows)
            var g = t % groups
            for p in range(g * per_group, min(panels, (g + 1) * per_group)):
                var pw = wp.unsafe_offset(p * depth * PANEL)
                var b0 = bp.unsafe_offset(p * PANEL).unsafe_load[width=v]()
                var b1 = bp.unsafe_offset(p * PANEL + v).unsafe_load[width=v]()
                var r = r0
                while r + TILE_ROWS <= r1:
                    var x0 = xp.unsafe_offset(r * depth)
                    var x1 = x0.unsafe_offset(depth)
                    var x2 = x1.unsafe_offset(depth)
                    var x3 = x2.unsafe_offset(depth)
                    var x4 = x3.unsafe_offset(depth)
                    var x5 = x4.unsafe_offset(depth)
                    var c00 = b0
                    var c01 = b1
                    var c10 = b0
                    var c11 = b1
                    var c20 = b0
                    var c21 = b1
                    var c30 = b0
                    var c31 = b1
                    var c40 = b0
                    var c41 = b1
                    var c50 = b0
                    var c51 = b1
                    for k in range(depth):
                        var wk = pw.unsafe_offset(k * PANEL)
                        var w0 = wk.unsafe_load[width=v]()
                        var w1 = wk.unsafe_offset(v).unsafe_load[width=v]()
                        var a = SIMD[DType.float32, v](x0.unsafe_offset(k).unsafe_load())
                        c00 = a.fma(w0, c00)
                        c01 = a.fma(w1, c01)
                        a = SIMD[DType.float32, v](x1.unsafe_offset(k).unsafe_load())
                        c10 = a.fma(w0, c10)
                        c11 = a.fma(w1, c11)
                        a = SIMD[DType.float32, v](x2.unsafe_offset(k).unsafe_load())
                        c20 = a.fma(w0, c20)
                        c21 = a.fma(w1, c21)
                        a = SIMD[DType.float32, v](x3.unsafe_offset(k).unsafe_load())
                        c30 = a.fma(w0, c30)
                        c31 = a.fma(w1, c31)
                        a = SIMD[DType.float32, v](x4.unsafe_offset(k).unsafe_load())
                        c40 = a.fma(w0, c40)
                        c41 = a.fma(w1, c41)
                        a = SIMD[DType.float32, v](x5.unsafe_offset(k).unsafe_load())
                        c50 = a.fma(w0, c50)
                        c51 = a.fma(w1, c51)
                    var o = op.unsafe_offset(r * cols + p * PANEL)
                    o.unsafe_store(c00)
                    o.unsafe_offset(v).unsafe_store(c01)
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(c10)
                    o.unsafe_offset(v).unsafe_store(c11)
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(c20)
                    o.unsafe_offset(v).unsafe_store(c21)
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(c30)
                    o.unsafe_offset(v).unsafe_store(c31)
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(c40)
                    o.unsafe_offset(v).unsafe_store(c41)
                    o = o.unsafe_offset(cols)
                    o.unsafe_store(c50)
                    o.unsafe_offset(v).unsafe_store(c51)
                    r += TILE_ROWS
                while r < r1:  # the rows past the last whole tile, one at a time
                    var xr = xp.unsafe_offset(r * depth)
                    var c0 = b0
                    var c1 = b1
                    for k in range(depth):
                        var wk = pw.unsafe_offset(k * PANEL)
                        var a = SIMD[DType.float32, v](xr.unsafe_offset(k).unsafe_load())
                        c0 = a.fma(wk.unsafe_load[width=v](), c0)
                        c1 = a.fma(wk.unsafe_offset(v).unsafe_load[width=v](), c1)
                    var o = op.unsafe_offset(r * cols + p * PANEL)
                    o.unsafe_store(c0)
                    o.unsafe_offset(v).unsafe_store(c1)
                    r += 1

        sync_parallelize(work, n_blocks * groups)
