# out[m, :] = x[m, :] @ w + bias in float32, the weight laid out at load time in panels of `panel`
# columns ([N / panel, K, panel]: a panel's K rows contiguous, so a register tile streams it without
# strides that thrash the L1 sets); `panel` is two of the CPU's vectors (16 with AVX2, 32 with
# AVX-512). The register tile is 6 rows by one panel, 12 accumulators fed by one broadcast of x and
# two loads of the panel per k. A task takes a block of rows small enough to stay in L2 and half of
# the panels, and sweeps them over it: a panel comes from L3 once per block, then from L1 for each
# of the block's tiles (MAX's own matmul stays well below the FMA units' rate on an AVX2 CPU for the
# encoder's shapes).
# panel_conv3 runs the same product over the rows of a kernel-3 convolution without building them:
# output position t's three input rows (t s - 1, t s, t s + 1 of a once-padded input) lie side by
# side in memory, so its row of the im2col matrix is the input read from row t s on.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize

comptime TILE_ROWS = 6
comptime PANEL_GROUPS = 2  # the panels split in two: a few rows still make two tasks
comptime ROW_BLOCK_FLOATS = 24576  # x floats a row block holds (96 KiB)
# the depth is summed in blocks of this many terms, each block's sum then added to the output's:
# a float32 sum's rounding error grows with its length, and the encoder's first layers amplify it
comptime DEPTH_BLOCK = 128


def panel_product[
    panel: Int
](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, MutAnyOrigin],
    wp: Pointer[Float32, MutAnyOrigin],
    bp: Pointer[Float32, MutAnyOrigin],
    rows: Int,
    depth: Int,
    x_step: Int,
    panels: Int,
):
    # rows output rows, row m from x[m x_step : m x_step + depth]
    comptime v = panel // 2
    var cols = panels * panel
    var block = TILE_ROWS * max(1, ROW_BLOCK_FLOATS // (TILE_ROWS * depth))
    var n_blocks = (rows + block - 1) // block
    var groups = PANEL_GROUPS if panels >= 2 * PANEL_GROUPS else 1
    var per_group = (panels + groups - 1) // groups

    def work(t: Int) {imm}:
        var r0 = (t // groups) * block
        var r1 = min(r0 + block, rows)
        var g = t % groups
        for p in range(g * per_group, min(panels, (g + 1) * per_group)):
            var pw = wp.unsafe_offset(p * depth * panel)
            var b0 = bp.unsafe_offset(p * panel).unsafe_load[width=v]()
            var b1 = bp.unsafe_offset(p * panel + v).unsafe_load[width=v]()
            var r = r0
            while r + TILE_ROWS <= r1:
                var x0 = xp.unsafe_offset(r * x_step)
                var x1 = x0.unsafe_offset(x_step)
                var x2 = x1.unsafe_offset(x_step)
                var x3 = x2.unsafe_offset(x_step)
                var x4 = x3.unsafe_offset(x_step)
                var x5 = x4.unsafe_offset(x_step)
                var o = op.unsafe_offset(r * cols + p * panel)
                var k0 = 0
                while k0 < depth:  # each block of the depth summed apart, then added to the output
                    var k1 = min(k0 + DEPTH_BLOCK, depth)
                    var c00 = SIMD[DType.float32, v](0)
                    var c01 = SIMD[DType.float32, v](0)
                    var c10 = SIMD[DType.float32, v](0)
                    var c11 = SIMD[DType.float32, v](0)
                    var c20 = SIMD[DType.float32, v](0)
                    var c21 = SIMD[DType.float32, v](0)
                    var c30 = SIMD[DType.float32, v](0)
                    var c31 = SIMD[DType.float32, v](0)
                    var c40 = SIMD[DType.float32, v](0)
                    var c41 = SIMD[DType.float32, v](0)
                    var c50 = SIMD[DType.float32, v](0)
                    var c51 = SIMD[DType.float32, v](0)
                    for k in range(k0, k1):
                        var wk = pw.unsafe_offset(k * panel)
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
                    var first = k0 == 0
                    accumulate(o, c00, c01, b0, b1, first)
                    accumulate(o.unsafe_offset(cols), c10, c11, b0, b1, first)
                    accumulate(o.unsafe_offset(2 * cols), c20, c21, b0, b1, first)
                    accumulate(o.unsafe_offset(3 * cols), c30, c31, b0, b1, first)
                    accumulate(o.unsafe_offset(4 * cols), c40, c41, b0, b1, first)
                    accumulate(o.unsafe_offset(5 * cols), c50, c51, b0, b1, first)
                    k0 = k1
                r += TILE_ROWS
            while r < r1:  # the rows past the last whole tile, one at a time
                var xr = xp.unsafe_offset(r * x_step)
                var o = op.unsafe_offset(r * cols + p * panel)
                var k0 = 0
                while k0 < depth:
                    var k1 = min(k0 + DEPTH_BLOCK, depth)
                    var c0 = SIMD[DType.float32, v](0)
                    var c1 = SIMD[DType.float32, v](0)
                    for k in range(k0, k1):
                        var wk = pw.unsafe_offset(k * panel)
                        var a = SIMD[DType.float32, v](xr.unsafe_offset(k).unsafe_load())
                        c0 = a.fma(wk.unsafe_load[width=v](), c0)
                        c1 = a.fma(wk.unsafe_offset(v).unsafe_load[width=v](), c1)
                    accumulate(o, c0, c1, b0, b1, k0 == 0)
                    k0 = k1
                r += 1

    sync_parallelize(work, n_blocks * groups)


@extensibility.register("panel_matmul")
struct PanelMatmul:
    @staticmethod
    def execute[
        target: StaticString, panel: Int
    ](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
    ) raises:
        var depth = x.dim_size(1)
        if w.dim_size(1) != depth or w.dim_size(2) != panel:
            raise Error("panel_matmul: the weight is not [N / panel, K, panel] for this x")
        panel_product[panel](
            output.unsafe_ptr(),
            x.unsafe_ptr(),
            w.unsafe_ptr(),
            bias.unsafe_ptr(),
            x.dim_size(0),
            depth,
            depth,
            w.dim_size(0),
        )


@extensibility.register("panel_conv3")
struct PanelConv3:
    # x [A, T + 2, C] (one zero row before and after each window's T) -> output [A, T_out, N]:
    # position t's product over x rows t stride .. t stride + 2 of its window, the weight
    # [N / panel, 3 C, panel]
    @staticmethod
    def execute[
        target: StaticString, panel: Int, stride: Int
    ](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        x: InputTensor[dtype=DType.float32, rank=3, ...],
        w: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
    ) raises:
        var windows = x.dim_size(0)
        var padded = x.dim_size(1)
        var channels = x.dim_size(2)
        var positions = output.dim_size(1)
        if w.dim_size(1) != 3 * channels or w.dim_size(2) != panel:
            raise Error("panel_conv3: the weight is not [N / panel, 3 C, panel] for this x")
        if (positions - 1) * stride + 3 > padded or output.dim_size(0) != windows:
            raise Error("panel_conv3: the output positions reach past the padded input")
        var cols = w.dim_size(0) * panel
        for a in range(windows):
            panel_product[panel](
                output.unsafe_ptr().unsafe_offset(a * positions * cols),
                x.unsafe_ptr().unsafe_offset(a * padded * channels),
                w.unsafe_ptr(),
                bias.unsafe_ptr(),
                positions,
                3 * channels,
                stride * channels,
                w.dim_size(0),
            )


@always_inline
def accumulate[
    v: Int
](
    o: Pointer[Float32, MutAnyOrigin],
    lo: SIMD[DType.float32, v],
    hi: SIMD[DType.float32, v],
    bias_lo: SIMD[DType.float32, v],
    bias_hi: SIMD[DType.float32, v],
    first: Bool,
):
    # one row of a panel: bias plus the first block's sums, or what the earlier blocks left plus
    # this block's
    if first:
        o.unsafe_store(bias_lo + lo)
        o.unsafe_offset(v).unsafe_store(bias_hi + hi)
    else:
        o.unsafe_store(o.unsafe_load[width=v]() + lo)
        o.unsafe_offset(v).unsafe_store(o.unsafe_offset(v).unsafe_load[width=v]() + hi)
