"""Source generation shared by the CUDA kernels (pure text: importing this needs no GPU).

The CUDA backend's kernels are text, loaded by :mod:`gruablate.backends.cuda.kernels` as
disk-cached modules; keeping the text generation away from ``numba.cuda`` lets the
tests and the docs read the generated source on a machine without numba-cuda. This
module holds what every generated module shares: the launch :class:`Geometry`, the
header, the argument types (:func:`signatures`), the tile machinery of the persistent
kernels (:func:`_product`, the workspace, the tile loop, launch bounds) and the
``common`` module, one per dtype and geometry, shared by all cells:

``matmul`` and ``matmul_big``
    shared-memory tiled products ``C = A B`` of strided operands read from flat arrays
    (numba-cuda has no cuBLAS binding), 64² and 128² outputs per block;
``ksum``
    the slices of a product split along k, added;
``colsum``
    column sums (the vector-parameter gradients, reduced without atomics);
``transpose``; ``zero`` and ``addto`` (``dst += src``) on flat buffers.

A cell's own ``forward`` and ``backward`` kernels are printed from its graph by
:mod:`.cell_source`.

All arrays are flat (1-D, C-contiguous) device arrays and all sizes are ``int64``, so
every kernel has exactly one signature per dtype (:func:`signatures`), which the tests
compile to PTX for a real GPU architecture without needing one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cache

from ...vocabulary import DTYPES


@dataclass(frozen=True)
class Geometry:
    """Launch geometry baked into the generated kernels as constants.

    ``jt``
        hidden units per tile of the recurrent kernels; one per lane of a warp, so a
        warp's loads of a weight row are coalesced.
    ``nw``
        warps per block of the recurrent kernels. In a product each warp sums one slice
        of the reduction dimension (split-K: the per-step products are latency-bound,
        and more warps make each one's serial slice shorter).
    ``bm``, ``jc``
        batch rows per tile, and hidden units per lane (``bm * jc`` at most ``nw``): a
        tile is ``bm`` rows by ``jt * jc`` hidden units. In a product each thread
        computes ``jc`` columns ``jt`` apart for all ``bm`` rows, so one load of a row's
        value feeds ``jc`` multiply-adds per gate; in the gate pass warp ``w < bm * jc``
        handles row ``r0 + w % bm``, columns ``(w // bm) * jt`` on, one element per
        thread. :meth:`for_batch` shrinks the rows for small batches (and sets ``jc``
        to 1 there: wider tiles would leave SMs idle), so a product does no work for
        rows that do not exist.
    ``mm_tile``, ``mm_bk``, ``mm_side``
        the tiled product: ``mm_tile``² outputs per block, ``mm_bk`` deep shared-memory
        tiles, ``mm_side``² threads, each computing (``mm_tile``/``mm_side``)² outputs
        held in registers.
    ``mm_split_k``
        the least reduction length per block when a product with too few output tiles
        for the GPU (fewer than ``mm_big_min``: the weight gradients, whose outputs are
        small and whose reduction runs over all T·B rows) is split along k.
    ``mm_big``, ``mm_big_min``
        the product for large outputs (``matmul_big``): ``mm_big``² outputs per block,
        so each thread holds (``mm_big``/``mm_side``)² and every shared-memory load
        feeds twice the multiply-adds. It is used when it still makes at least
        ``mm_big_min`` blocks (enough to fill the GPU; fewer, larger blocks would leave
        SMs idle on the weight-gradient products, whose outputs are small).
    ``ku``
        reduction steps a warp of a recurrent product loads at once, before any of
        their multiply-adds, so that the waits of their loads on L2 (the operands were
        written by other blocks a step before) overlap. On an H100 its effect was
        within the noise of three calls (``benchmarks/RESULTS.md``); 4 is kept.
    ``ew_threads``
        block size of the element-wise kernels (scan path, transpose).
    """

    jt: int = 32
    nw: int = 16
    bm: int = 4
    jc: int = 2
    ku: int = 4
    mm_tile: int = 64
    mm_bk: int = 16
    mm_side: int = 16
    mm_big: int = 128
    mm_big_min: int = 264  # two blocks of 256 threads on each of an H100's 132 SMs
    mm_split_k: int = 512
    ew_threads: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"Geometry.{f.name} must be positive")
        if self.bm * self.jc > self.nw:
            raise ValueError(
                "Geometry.bm * jc must be at most nw (one warp per row and column group"
                " in the gate pass)"
            )
        for tile in (self.mm_tile, self.mm_big):
            # Every thread holds (tile / mm_side)² outputs and loads the same number of
            # elements of each operand's k-tile.
            if tile % self.mm_side or (tile * self.mm_bk) % (self.mm_side * self.mm_side):
                raise ValueError(
                    "Geometry.mm_tile and mm_big must be multiples of mm_side, and their"
                    " k-tiles (times mm_bk) multiples of mm_side**2"
                )

    @property
    def threads(self) -> int:
        """Threads per block of the recurrent kernels."""
        return self.jt * self.nw

    @property
    def tile_cols(self) -> int:
        """Hidden units per tile of the recurrent kernels."""
        return self.jt * self.jc

    @property
    def key(self) -> str:
        """Every field, for the generated modules' headers (and so their file names)."""
        return "-".join(f"{f.name}{getattr(self, f.name)}" for f in fields(self))

    def for_batch(self, B: int) -> Geometry:
        """This geometry with tiles of no more rows than the next power of two >= ``B``
        (so batches of 1, 2 and 4 get 1-, 2- and 4-row tiles, and at most four kernel
        modules exist per variant), and one column per lane where the batch fits one
        tile: there a tile ``jc`` times as wide would make ``jc`` times fewer tiles, and
        leave SMs idle."""
        rows = 1 << max(int(B) - 1, 0).bit_length()
        if rows > self.bm or (rows == self.bm and self.jc == 1):
            return self
        return replace(self, bm=min(rows, self.bm), jc=1)


#: What a GPU runs: 512-thread blocks; tiles of 4 batch rows by 64 hidden units (two
#: per lane), and of 1, 2 or 4 rows by 32 units for batches of up to 4.
DEFAULT_GEOMETRY = Geometry()
#: Tiny tiles for the simulator: it runs every thread as a Python thread, and small
#: tiles make tiny test sizes span several tiles, which exercises the tiling logic.
SIM_GEOMETRY = Geometry(
    jt=2, nw=4, bm=2, jc=2, ku=2, mm_tile=4, mm_bk=2, mm_side=2, mm_big=8, mm_big_min=4,
    mm_split_k=4, ew_threads=4
)

COMMON_KERNELS = ("matmul", "matmul_big", "colsum", "transpose", "ksum", "zero", "addto")

_MATMUL_ARGS = (
    "M",
    "N",
    "K",
    "a",
    "a_off",
    "sam",
    "sak",
    "bm",
    "b_off",
    "sbk",
    "sbn",
    "cm",
    "c_off",
    "ldc",
    "kc",
    "czs",
)
_ARGS = {
    "matmul": _MATMUL_ARGS,
    "matmul_big": _MATMUL_ARGS,
    "colsum": ("R", "N", "src", "s_off", "lds", "dst", "d_off"),
    "zero": ("N", "dst"),
    "addto": ("N", "src", "dst"),
    "transpose": ("R", "C", "src", "s_off", "dst"),
    "ksum": ("S", "R", "C", "src", "dst", "d_off", "ldd"),
}
_INT_ARGS = frozenset(
    (
        "T",
        "B",
        "H",
        "keep",
        "M",
        "N",
        "K",
        "R",
        "C",
        "a_off",
        "sam",
        "sak",
        "b_off",
        "sbk",
        "sbn",
        "c_off",
        "ldc",
        "d_off",
        "s_off",
        "lds",
        "kc",
        "czs",
        "S",
        "ldd",
    )
)


def signatures(dtype: str, table: dict[str, tuple[str, ...]] | None = None,
               ints: frozenset[str] = _INT_ARGS,
               int_arrays: frozenset[str] = frozenset()) -> dict[str, tuple]:
    """The one argument-type tuple of every kernel, for ``compile_ptx`` and launches:
    ``int64`` for the arguments named in ``ints``, flat ``int64`` arrays for those in
    ``int_arrays``, flat ``dtype`` arrays for the rest. ``table`` gives each kernel's
    argument names (default: the common kernels')."""
    from numba.core import types

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    arr = types.Array(getattr(types, dtype), 1, "C")
    iarr = types.Array(types.int64, 1, "C")
    return {
        name: tuple(types.int64 if a in ints else iarr if a in int_arrays else arr
                    for a in args)
        for name, args in (_ARGS if table is None else table).items()
    }


class _Code:
    """A list of source lines with an indentation level."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.level = 0

    def __call__(self, *lines: str) -> None:
        for line in lines:
            self.lines.append("    " * self.level + line if line else "")

    def indent(self) -> None:
        self.level += 1

    def dedent(self) -> None:
        self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _header(kind: str, what: str, dtype: str, geo: Geometry,
            source: str = "gruablate.backends.cuda.source") -> list[str]:
    return [
        f"# Generated by {source} ({kind}) for {what} ({dtype},",
        f"# geometry {geo.key}). Do not edit: the file name is the hash of this text, and",
        "# numba caches the compiled kernels beside it.",
        "import math",
        "",
        "import numpy as np",
        "from numba import cuda",
        f"from numba import {dtype} as NBT",
        "",
        f"DT = np.{dtype}",
        "ONE = DT(1.0)",
        "ZERO = DT(0.0)",
        f"JT = {geo.jt}",
        f"NW = {geo.nw}",
        f"BM = {geo.bm}",
        f"JC = {geo.jc}",
        f"JTC = {geo.tile_cols}",
        f"BMC = {geo.bm * geo.jc}",
        f"KU = {geo.ku}",
        f"NT = {geo.threads}",
        f"TM = {geo.mm_tile}",
        f"BK = {geo.mm_bk}",
        f"TH = {geo.mm_side}",
        f"EW = {geo.ew_threads}",
        # Shared-array shapes must be literal constants for numba, not expressions.
        f"TM1 = {geo.mm_tile + 1}",
        f"TG = {geo.mm_big}",
        f"TG1 = {geo.mm_big + 1}",
    ]


# ---------------------------------------------------------------------- common
def _matmul(c: _Code, geo: Geometry, name: str, big: bool) -> None:
    """Emit the tiled product kernel ``name``: ``mm_big``² outputs per block if ``big``,
    else ``mm_tile``²."""
    tile, TM, TM1 = (geo.mm_big, "TG", "TG1") if big else (geo.mm_tile, "TM", "TM1")
    rm = tile // geo.mm_side
    c(
        "",
        "",
        "@cuda.jit(cache=True)",
        f"def {name}(M, N, K, a, a_off, sam, sak, bm, b_off, sbk, sbn, cm, c_off, ldc, kc, czs):",
    )
    c.indent()
    c(
        '"""cm[c_off + m*ldc + n] = sum_k A[m, k] B[k, n] with A[m, k] = a[a_off + m*sam +',
        "k*sak] and B[k, n] = bm[b_off + k*sbk + n*sbn]: one kernel serves the products",
        "A B, A B^T and A^T B of the layer by strides alone. Split-K: block z sums",
        "k in [z*kc, z*kc + kc) into the slice at c_off + z*czs (ksum adds the slices);",
        'with one z, kc = K."""',
        "# k-major tiles, padded by one column so the transposing stores do not all",
        "# hit one shared-memory bank.",
        f"As = cuda.shared.array((BK, {TM1}), NBT)",
        f"Bs = cuda.shared.array((BK, {TM1}), NBT)",
        "tx = cuda.threadIdx.x",
        "ty = cuda.threadIdx.y",
        "tid = ty * TH + tx",
        f"m0 = cuda.blockIdx.y * {TM}",
        f"n0 = cuda.blockIdx.x * {TM}",
    )
    for i in range(rm):
        c(" = ".join(f"acc_{i}_{j}" for j in range(rm)) + " = ZERO")
    # Each thread moves nld elements of each operand per k-tile. Which (row, k) of the
    # tile they are does not change with k, so the indices are worked out once; the
    # loads walk whichever index is contiguous in memory, so they coalesce for every
    # transpose flavour (the branch is uniform across the block).
    threads = geo.mm_side * geo.mm_side
    nld = tile * geo.mm_bk // threads  # a whole number: Geometry checks it
    operands = (
        ("As", "a", "a_off", "sam", "sak", "M", "m0", "sak != 1", "a"),
        ("Bs", "bm", "b_off", "sbn", "sbk", "N", "n0", "sbn == 1", "b"),
    )
    for _, _, off, s_o, _, lim, base, o_fast, p in operands:
        for r in range(nld):
            c(
                f"e = tid + {r * threads}",
                f"if {o_fast}:",
                f"    {p}o_{r} = e % {TM}",
                f"    {p}k_{r} = e // {TM}",
                "else:",
                f"    {p}k_{r} = e % BK",
                f"    {p}o_{r} = e // BK",
                f"{p}b_{r} = {off} + ({base} + {p}o_{r}) * {s_o}",
                f"{p}in_{r} = {base} + {p}o_{r} < {lim}",
            )

    def loads(k0: str) -> None:
        """Read the k-tile at ``k0`` into registers (zeros past the edges)."""
        for _, arr, _, _, s_k, _, _, _, p in operands:
            for r in range(nld):
                c(
                    f"gk = {k0} + {p}k_{r}",
                    f"{p}v_{r} = {arr}[{p}b_{r} + gk * {s_k}] if {p}in_{r} and gk < ke else ZERO",
                )

    c(
        "kb = cuda.blockIdx.z * kc",
        "ke = min(K, kb + kc)",
        "c_base = c_off + cuda.blockIdx.z * czs",
    )
    # Software pipelining: the next k-tile's global loads are issued before this one's
    # multiply-adds, so their latency hides behind the arithmetic (with the loads and
    # shared-memory stores interleaved, each load's latency was paid in turn).
    loads("kb")
    c("for k0 in range(kb, ke, BK):")
    c.indent()
    for tname, *_, p in operands:
        for r in range(nld):
            c(f"{tname}[{p}k_{r}, {p}o_{r}] = {p}v_{r}")
    c("cuda.syncthreads()")
    loads("k0 + BK")
    c("for kk in range(BK):")
    c.indent()
    for i in range(rm):
        c(f"ra_{i} = As[kk, ty + {i * geo.mm_side}]")
    for j in range(rm):
        c(f"rb_{j} = Bs[kk, tx + {j * geo.mm_side}]")
    for i in range(rm):
        for j in range(rm):
            c(f"acc_{i}_{j} += ra_{i} * rb_{j}")
    c.dedent()
    c("cuda.syncthreads()")
    c.dedent()
    for i in range(rm):
        c(f"gm = m0 + ty + {i * geo.mm_side}", "if gm < M:")
        c.indent()
        for j in range(rm):
            c(
                f"gn = n0 + tx + {j * geo.mm_side}",
                "if gn < N:",
                f"    cm[c_base + gm * ldc + gn] = acc_{i}_{j}",
            )
        c.dedent()
    c.dedent()


@cache
def common_source(dtype: str, geo: Geometry = DEFAULT_GEOMETRY) -> str:
    """Module text of the variant-independent kernels (:data:`COMMON_KERNELS`)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    c = _Code()
    c(*_header("common", "all variants", dtype, geo))
    _matmul(c, geo, "matmul", big=False)
    _matmul(c, geo, "matmul_big", big=True)
    c(
        "",
        "",
        "@cuda.jit(cache=True)",
        "def colsum(R, N, src, s_off, lds, dst, d_off):",
        '    """dst[d_off + n] = sum_r src[s_off + r*lds + n]: a block owns JT columns, its',
        '    NW warps stride over the rows, and a shared-memory sum (not atomics) combines',
        '    them, in an order fixed by the geometry."""',
        "    red = cuda.shared.array(NT, NBT)",
        "    lane = cuda.threadIdx.x % JT",
        "    row = cuda.threadIdx.x // JT",
        "    n = cuda.blockIdx.x * JT + lane",
        "    s = ZERO",
        "    if n < N:",
        "        for r in range(row, R, NW):",
        "            s += src[s_off + r * lds + n]",
        "    red[row * JT + lane] = s",
        "    cuda.syncthreads()",
        "    if row == 0 and n < N:",
        "        tot = ZERO",
        "        for w in range(NW):",
        "            tot += red[w * JT + lane]",
        "        dst[d_off + n] = tot",
        "",
        "",
        "@cuda.jit(cache=True)",
        "def transpose(R, C, src, s_off, dst):",
        '    """dst (C x R) = src[s_off:] (R x C) transposed; one thread per output, so the',
        '    stores coalesce (it runs once per parameter update, not per step)."""',
        "    i = cuda.grid(1)",
        "    if i < R * C:",
        "        col = i // R",
        "        row = i % R",
        "        dst[i] = src[s_off + row * C + col]",
        "",
        "",
        "@cuda.jit(cache=True)",
        "def ksum(S, R, C, src, dst, d_off, ldd):",
        '    """dst[d_off + r*ldd + c] = sum_s src[(s*R + r)*C + c]: the split-K partial',
        '    products added in a fixed order (no atomics), one thread per output."""',
        "    i = cuda.grid(1)",
        "    if i < R * C:",
        "        r = i // C",
        "        t = ZERO",
        "        for s in range(S):",
        "            t += src[s * R * C + i]",
        "        dst[d_off + r * ldd + i - r * C] = t",
        "",
        "",
        "@cuda.jit(cache=True)",
        "def zero(N, dst):",
        '    """dst[:N] = 0."""',
        "    i = cuda.grid(1)",
        "    if i < N:",
        "        dst[i] = ZERO",
        "",
        "",
        "@cuda.jit(cache=True)",
        "def addto(N, src, dst):",
        '    """dst[:N] += src[:N]."""',
        "    i = cuda.grid(1)",
        "    if i < N:",
        "        dst[i] += src[i]",
    )
    return c.text()


# ------------------------------------------------------------- cell kernels
def _product(
    c: _Code, G: int, a: str, a_off: str, lda: str, bm: str, col: str, ldb: str, K: str,
    store: str, guard: str = "",
) -> None:
    """Emit one tile of a recurrent product into ``store``, an element of block ``q_g``
    at the thread's ``(bi, j)``, where ``guard`` holds:

    ``store = sum_k a[a_off + (r0+m)*lda + k] * bm[col + g*H + j0+n + k*ldb]``
    for the tile's batch rows ``r0 + m`` and hidden units ``j0 + n`` (``g < G`` selects
    a gate's block of columns). Warp ``q_w`` sums the ``k`` of its slice for all BM rows,
    G groups and JC columns per lane (``q_l``, ``q_l + JT``, ...) in the local arrays
    (constant trip counts: NVVM unrolls them into registers; the tests check the PTX
    has no local memory), KU steps of k at a time, all their loads issued before their
    multiply-adds; the A value is a broadcast load, the B rows coalesced ones, each
    value reused across rows or columns. The warps' partial sums are then added
    through shared memory.
    """
    yi = f"(q_u * {G} + q_g) * JC + q_c"
    ai = f"(q_r * {G} + q_g) * JC + q_c"

    def steps(n: str) -> None:
        """The loop body for ``n`` reduction steps from ``q_k``: every load, then every
        multiply-add."""
        c.indent()
        c(
            f"for q_u in range({n}):",
            f"    q_kr = (q_k + q_u) * {ldb}",
            f"    for q_g in range({G}):",
            "        for q_c in range(JC):  # clamped: columns past H are never stored",
            f"            q_y[{yi}] = {bm}[{col} + q_g * H + min(j0 + q_c * JT + q_l, H - 1)"
            " + q_kr]",
            "    for q_r in range(BM):",
            "        q_x[q_u * BM + q_r] = "
            f"{a}[{a_off} + min(r0 + q_r, B - 1) * {lda} + q_k + q_u]",
            f"for q_u in range({n}):",
            "    for q_r in range(BM):",
            f"        for q_g in range({G}):",
            "            for q_c in range(JC):",
            f"                q_acc[{ai}] += q_x[q_u * BM + q_r] * q_y[{yi}]",
        )
        c.dedent()

    c(
        # Each warp's slice is a whole number of KU-step groups; the last warp's may
        # end early (q_ke), and its remainder runs one step at a time.
        f"q_kc = (({K} + NW - 1) // NW + KU - 1) // KU * KU",
        "q_kb = q_w * q_kc",
        f"q_ke = min({K}, q_kb + q_kc)",
        "q_ku = q_kb + max(q_ke - q_kb, 0) // KU * KU  # end of the whole groups",
        f"for q_i in range(BM * {G} * JC):",
        "    q_acc[q_i] = ZERO",
        "for q_k in range(q_kb, q_ku, KU):",
    )
    steps("KU")
    c("for q_k in range(q_ku, q_ke):")
    steps("1")
    c(
        f"for q_g in range({G}):",
        "    for q_r in range(BM):",
        "        for q_c in range(JC):",
        f"            part[(q_w * BM + q_r) * JTC + q_c * JT + q_l] = q_acc[{ai}]",
        "    cuda.syncthreads()",
        f"    if q_w < BMC{guard}:  # warp w adds the NW partial sums of its row, columns",
        "        q_t = ZERO",
        "        for q_v in range(NW):",
        "            q_t += part[(q_v * BM + q_m) * JTC + q_n]",
        f"        {store} = q_t",
        "    cuda.syncthreads()",
    )


def _tile_workspace(c: _Code) -> None:
    """The persistent kernels' grid, the products' shared and local arrays, and which
    tile element each thread owns in the element-wise passes."""
    c(
        "grid = cuda.cg.this_grid()",
        "part = cuda.shared.array(PART_N, NBT)",
        "q_acc = cuda.local.array(ACC_N, NBT)",
        "q_y = cuda.local.array(YK_N, NBT)",
        "q_x = cuda.local.array(XK_N, NBT)",
        "q_w = cuda.threadIdx.x // JT",
        "q_l = cuda.threadIdx.x % JT",
        "# In the element-wise passes warp q_w handles tile row q_m, tile column q_n.",
        "q_m = q_w % BM",
        "q_n = (q_w // BM) * JT + q_l",
        "ntj = (H + JTC - 1) // JTC",
        "ntiles = ((B + BM - 1) // BM) * ntj",
    )


def _scan_head(c: _Code, backward: bool) -> None:
    """The scan kernels' start: one thread per (batch row, hidden unit), walking the
    sequence (backwards for the backward pass)."""
    c("idx = cuda.grid(1)", "if idx < BH:")
    c.indent()
    steps = "range(T - 1, -1, -1)" if backward else "range(T)"
    c("bi = idx // H", "j = idx % H", f"for t in {steps}:")
    c.indent()


def _launch_bounds(c: _Code, recurrent: bool) -> None:
    """``BOUNDS``, the cell kernels' launch bounds: the persistent kernels' block size, or
    the scan's."""
    c(
        "# Launch bounds make ptxas fit the registers to the block size (a cooperative",
        "# launch must fit whole); numba's simulator takes no such option.",
        "from gruablate.backends.cuda.device import simulator_enabled",
        "",
        "BOUNDS = {} if simulator_enabled() else {'launch_bounds': %s}"
        % ("NT" if recurrent else "EW"),
    )


def _tile_loop(c: _Code) -> None:
    c(
        "for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):",
        "    r0 = (tile // ntj) * BM",
        "    j0 = (tile % ntj) * JTC",
        "    bi = r0 + q_m",
        "    j = j0 + q_n",
    )
    c.indent()
