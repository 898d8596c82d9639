"""The CPU kernels' runtime: SIMD matrix products, a thread launcher, a small C ABI.

Compiled once per dtype and cached; the per-variant modules that :mod:`cpu` generates
call it through exported symbols, not by linking it in. Why each piece exists:

**Products, not BLAS.** The recurrent product of one step is small (``B × H`` by
``H × 3H``) and a BLAS call on it repacks the weights every step; on the 2-core AMD
EPYC of ``benchmarks/RESULTS.md`` scipy's OpenBLAS ran such a product at about 30
GFLOP/s, against about 68 for the micro-kernel below on weights packed once per
sequence. BLAS also brings a second thread pool, which competes with Numba's threads
for the cores. The micro-kernel is a Numba ``@intrinsic`` emitting LLVM vector code
(Numba turns LLVM's SLP vectoriser off, so unrolled scalar code stays scalar):
``MR`` rows × ``NR`` columns of ``C`` in ``MR × 3`` vector registers; per ``k`` one
broadcast of ``A`` per row and three vector loads of the packed ``B`` panel.
``fmul``/``fadd`` carry LLVM's ``contract`` flag: FMA where the CPU has it, still
correct where it does not.

**Tiles per CPU.** The vector width, ``MR`` and the k-block ``KC`` follow the CPU Numba
compiles for (:func:`choose_tile`): AVX-512 gets 64-byte vectors, 8 rows (24 of its 32
zmm registers accumulate; ``NR`` = 48 float32 or 24 float64 columns) and KC = 128;
anything else 32-byte vectors, 4 rows (12 of AVX2's 16 ymm; ``NR`` = 24 or 12) and
KC = 512, which LLVM splits into narrower vectors on older CPUs. ``GRUABLATE_CPU_TILE``
forces a tile. The tile is part of every symbol's name (:data:`TAG`), of the
generated modules' text and of the cache files of this module's functions
(:class:`_TileCacheLocator`), so code built for one tile never runs with another;
Numba's cache keys machine code on the CPU besides. Results are the same bits for any
thread count on one machine. Between tiles they may differ in the last bits: a product
whose reduction is longer than KC sums it in blocks of KC, and the batch-1 dot
products sum in vectors of the tile's width.

**Exported symbols.** Numba links every callee's LLVM module into each caller and
optimises and emits it again there; with the products and a ``prange`` in every
variant's three kernels, a cold compile took 20-30 s per variant and dtype. Here the
runtime (products, packing, the parallel launcher) is compiled once into ``cfunc``s
whose addresses are registered with LLVM under fixed names (``llvmlite``'s
``add_symbol``, as Numba does for its own helpers). Kernels call them by name through
:func:`symbol` and :func:`ccall`: nothing is linked, machine code caches, and a cached
kernel re-registers the names it needs on load (Numba's ``reload_init`` hook) before
its object code is linked. All exported functions take only ``int64`` arguments
(addresses and sizes), so one call intrinsic serves all of them.

**Launcher.** :func:`run_chunks` runs a per-variant ``cfunc`` on ``nch`` row blocks
in parallel (``prange``); the variant code itself has no ``prange`` and compiles fast.

Packed panel layout (see :func:`pack` and :func:`panel_at`): a panel whose first
column is ``n0`` and which is ``w`` columns wide starts at ``n0 * K`` and holds
``P[n0 * K + k * w + jj] = B[k, n0 + jj]``, zero where ``n0 + jj >= N``. Panels are
``NR`` wide but for the last one or two, which are only as many whole vectors as the
columns need, and run a micro-kernel one or two vectors wide: with ``NR`` = 24, a
product of ``N = 32`` columns (``rnn`` at ``H = 32``) computed 48 and the one of
``N = 512`` computed 528; the per-step products of every variant's backward pass have
``N = H``. Where one vector would be left over (``N = 512 = 21 * 24 + 8``), the last
full panel and that vector become two panels of two vectors: a one-vector panel keeps
only 4 accumulators in flight and ran at half speed. Each column is the same chain of
fused multiply-adds at any width, so the results are those of the wide kernel to the
bit.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.core import caching, cgutils
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_machinery import FunctionPass, register_pass
from numba.core.typed_passes import NopythonTypeInference
from numba.extending import intrinsic

from .threads import start_threads


class _FastMathFlags(set):
    """A set of fast-math flags that prints in one order in every process.

    Numba mangles its flags into the name of every compiled function, writing the
    fast-math set with ``str(set)``, whose order follows the strings' hashes: it
    differs between processes (``PYTHONHASHSEED``), and a copy of a set need not
    iterate like the original. Sorted, a kernel has the same name in every process that
    compiles it (the crash once seen beside such mixed names had another cause: see
    :func:`gruablate.backends.cpu.kernels.kernels`).
    """

    def __repr__(self) -> str:
        return "{" + ", ".join(repr(f) for f in sorted(self)) + "}"

    __str__ = __repr__

    def copy(self) -> _FastMathFlags:
        return _FastMathFlags(self)


# Fast-math flags for the kernels: reciprocals, signed zeros and approximate functions,
# but not nnan/ninf, so NaN and infinity still propagate as IEEE says. Neither
# ``contract`` nor ``reassoc``: Numba links a private copy of every callee into each
# caller, and which copy a call reaches depends on what the process compiled before (the
# first definition of a weak symbol wins). With freedom to fuse either product of
# ``f*c + i*g`` or to reorder sums, copies optimised in different modules rounded
# differently, and a process that compiled a kernel got other low bits than one that
# loaded it from the cache. Without them every copy computes the same thing. The
# products' explicit vector code keeps its single-product FMAs (``_FLAGS``): there is
# only one way to fuse ``acc + a*b``.
FASTMATH = _FastMathFlags({"arcp", "nsz", "afn"})


def target_features() -> str:
    """The CPU features Numba compiles for: ``NUMBA_CPU_FEATURES`` if set, else the
    host's as LLVM sees them (what Numba itself uses)."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return str(config.CPU_FEATURES)
    return llb.get_host_cpu_features().flatten()


#: The register tiles the products can use: (vector bytes, micro-kernel rows, k-block).
#: Each row of a tile keeps NVEC vector accumulators, so a tile holds MR × NVEC of them
#: plus NVEC loads of the packed panel and one broadcast: 4 × 3 + 4 = 16 registers for
#: AVX2's 16 ymm, 8 × 3 + 4 = 28 of AVX-512's 32 zmm. The k-block keeps a packed
#: KC × NR panel in L1 (see KC below).
TILES = {"avx2": (32, 4, 512), "avx512": (64, 8, 128)}
#: Environment variable that forces a tile (``avx2`` or ``avx512``) whatever the CPU:
#: the tests run each path everywhere (LLVM splits wide vectors on narrower CPUs: slow,
#: still correct).
TILE_ENV = "GRUABLATE_CPU_TILE"


def choose_tile(features: str | None = None, forced: str | None = None) -> str:
    """The tile for a CPU with LLVM feature string ``features`` (``+avx512f,...``):
    ``avx512`` where AVX-512F is there, else ``avx2`` (its 32-byte vectors are also the
    portable choice: LLVM splits them on older CPUs). ``forced`` (default: the
    :data:`TILE_ENV` variable) overrides; anything but a known tile is a ValueError."""
    forced = os.environ.get(TILE_ENV) if forced is None else forced
    if forced:
        if forced not in TILES:
            raise ValueError(f"{TILE_ENV} must be one of {', '.join(TILES)}, got {forced!r}")
        return forced
    features = target_features() if features is None else features
    return "avx512" if "+avx512f" in features.split(",") else "avx2"


TILE = choose_tile()
VECTOR_BYTES, MR_MAX, KC = TILES[TILE]  # vector bytes; rows of a tile; k-block
NVEC = 3  # vectors per micro-kernel row
MR_MID = 4  # a smaller tile height for the rows left over after whole MR_MAX tiles
# KC, the k-block of the packed GEMM: with AVX-512's panels of 192 bytes per k, KC = 128
# keeps a panel (24 KB) in a 48 KB L1; at 512 (96 KB, from L2) a 2048³ float32
# product on two threads of a Sapphire Rapids class Xeon ran at 213 GFLOP/s, at 128 at
# 361 (MKL: 359). The AVX2 tile keeps 512 (48 KB panels): its figures and bits in
# benchmarks/RESULTS.md were taken so (on that Xeon 256 gave 234 against 219 GFLOP/s).
MC = 128  # row block of the packed GEMM: MC × KC of A (256 KB) stays in L2 across panels
GEMV_MAX_ROWS = 3  # below 4 rows a product is a matrix-vector one: no packing
# Below this many multiply-adds a product (or a whole recurrence) runs on the calling
# thread: waking a sleeping worker costs tens of microseconds on a quiet machine and a
# scheduler tick (4 ms) on a loaded one, more than such a problem takes serially.
PARALLEL_MIN_WORK = 1 << 20



class _TileCacheLocator(caching._CacheLocator):
    """Numba's own cache locator for this file, with the tile in every file's name.

    Numba keys a cached function on its bytecode, closure, signature and CPU, not on
    the module globals it reads: without this, ``gemm`` cached under one tile (its
    VECTOR_BYTES, MR_MAX, KC frozen in) would be loaded under another
    (``GRUABLATE_CPU_TILE``) and crash. Registered before the first cached function of
    this module is defined (a dispatcher picks its locator then).
    """

    _file = os.path.abspath(__file__)

    def __init__(self, inner: caching._CacheLocator) -> None:
        self._inner = inner

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return self._inner.get_source_stamp()

    def get_disambiguator(self) -> str:
        return f"{self._inner.get_disambiguator()}-{TILE}"

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.abspath(py_file) != cls._file:
            return None
        for klass in caching.CacheImpl._locator_classes:
            if klass is not cls:
                inner = klass.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


if _TileCacheLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, _TileCacheLocator)

# Symbols of this runtime carry the hash of its source: a kernel compiled against an
# older runtime can never bind to a newer one.
# The tile is part of the tag too: modules built for one tile never bind to another's.
TAG = hashlib.sha256(Path(__file__).read_bytes() + TILE.encode()).hexdigest()[:12]

_FLAGS = ("contract",)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it.

    Each kernel call allocates activations and workspaces of up to tens of MB, and the
    layer frees them on the next call. glibc hands blocks that large back to the
    operating system (``munmap``, heap trimming), so every call page-faulted its memory
    in again: a third of an LSTM forward at H = 128 on the machine of
    ``benchmarks/RESULTS.md``. With ``M_MMAP_MAX = 0`` and a high ``M_TRIM_THRESHOLD``
    the memory is reused, as PyTorch's caching allocator reuses its own; the process
    keeps its peak footprint. Set ``GRUABLATE_KEEP_FREED_MEMORY=0`` to leave glibc's
    defaults alone. Returns whether the settings were applied (not on non-glibc
    systems).
    """
    if os.environ.get("GRUABLATE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_max, 0))


def panel_width(dtype: str | np.dtype) -> int:
    """``NR``: columns of one packed panel (AVX2 tile: 24 for float32, 12 for float64;
    AVX-512: 48 and 24)."""
    return NVEC * VECTOR_BYTES // np.dtype(dtype).itemsize


def runtime_symbol(fn: str, dtype: str | None = None) -> str:
    """The exported name of a runtime function (``gemm``, ``pack``, ``run_chunks``)."""
    return f"gruablate_{TAG}_{fn}" + (f"_{dtype}" if dtype else "")


# ------------------------------------------------------------------ noalias functions
@register_pass(mutates_CFG=False, analysis_only=True)
class _NoAliasArguments(FunctionPass):
    """Marks the function's pointer arguments ``noalias`` (Numba's ``noalias`` flag)."""

    _name = "gruablate_noalias_arguments"

    def __init__(self) -> None:
        FunctionPass.__init__(self)

    def run_pass(self, state) -> bool:
        state.flags.noalias = True
        return False


class NoAliasCompiler(CompilerBase):
    """Numba's nopython pipeline, with every array argument's data marked ``noalias``.

    The gate loop of a step reads and writes a dozen rows of different arrays; without
    aliasing information LLVM must check every pair at run time before vectorising,
    gives up beyond its limit of checks, and the backward loops stayed scalar. The
    kernels call their gate loops as functions compiled with this pipeline, passing
    each row once, so the promise holds: no two arguments overlap.
    """

    def define_pipelines(self):
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.add_pass_after(_NoAliasArguments, NopythonTypeInference)
        pm.finalize()
        return [pm]


# ------------------------------------------------------------------ symbol registry
_PROVIDERS: dict[str, Callable[[], object]] = {}
_EXPORTED: dict[str, object] = {}  # keeps every cfunc (and its machine code) alive


def provide(name: str, make: Callable[[], object]) -> None:
    """Declare how to build the ``cfunc`` behind symbol ``name`` (built on demand).

    A ``cfunc`` loaded from Numba's cache links its object code at once and runs no
    ``reload_init`` hook: the symbols it calls must be registered before it (the kernel
    modules list theirs in order, see :func:`gruablate.backends.cpu.kernels.kernels`).
    """
    _PROVIDERS.setdefault(name, make)


def ensure_symbol(name: str) -> None:
    """Compile (or load from cache) the ``cfunc`` behind ``name`` and register it."""
    if name in _EXPORTED:
        return
    try:
        make = _PROVIDERS[name]
    except KeyError:
        raise RuntimeError(
            f"gruablate kernel symbol {name!r} has no provider: its module was not"
            " imported in this process (a stale kernel cache?)"
        ) from None
    # A cfunc loaded from Numba's cache does not run reload_init: the threading
    # layer's symbols (used by the prange of gemm and run_chunks) are registered here.
    start_threads()
    cf = make()
    llb.add_symbol(name, cf.address)
    _EXPORTED[name] = cf


@intrinsic
def symbol(typingctx, name):
    """The address of exported function ``name`` (a string literal), as int64.

    The reference is by name, so it survives Numba's cache; on load the symbol is
    registered again (``reload_init``) before the cached code is linked.
    """
    if not isinstance(name, types.StringLiteral):
        return None
    sym = name.literal_value
    ensure_symbol(sym)

    def codegen(context, builder, sig, args):
        context.active_code_library._reload_init.add(functools.partial(ensure_symbol, sym))
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, sym)
        return builder.ptrtoint(fn, ir.IntType(64))

    return types.int64(name), codegen


@intrinsic
def ccall(typingctx, addr, *args):
    """Call the function at ``addr`` with int64 arguments (the runtime's C ABI)."""
    if len(args) == 1 and isinstance(args[0], types.BaseTuple):
        args = tuple(args[0])
    if not all(isinstance(a, types.Integer) for a in (addr, *args)):
        return None
    sig = types.void(addr, types.StarArgTuple(args))

    def codegen(context, builder, sig, llargs):
        i64 = ir.IntType(64)
        target = context.cast(builder, llargs[0], sig.args[0], types.int64)
        vals = [
            context.cast(builder, v, t, types.int64)
            for v, t in zip(cgutils.unpack_tuple(builder, llargs[1]), sig.args[1].types,
                            strict=True)
        ]
        fnty = ir.FunctionType(ir.VoidType(), [i64] * len(vals))
        builder.call(builder.inttoptr(target, fnty.as_pointer()), vals)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def address(typingctx, arr):
    """The data address of an array, as int64."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.int64(arr), codegen


@intrinsic
def as_pointer(typingctx, addr, like):
    """``addr`` as a typed pointer to ``like``'s type (for ``numba.carray``)."""
    if not isinstance(addr, types.Integer) or not isinstance(like, types.Number):
        return None
    sig = types.CPointer(like)(addr, like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return sig, codegen


@intrinsic
def keep_alive(typingctx, *arrays):
    """No-op that keeps arrays referenced (and so allocated) up to this point.

    Arrays whose address went to a :func:`ccall` are otherwise dead to Numba's
    reference counting after that expression, and could be freed before the call.
    """
    sig = types.void(types.StarArgTuple(tuple(arrays[0]) if len(arrays) == 1 and
                                        isinstance(arrays[0], types.BaseTuple) else arrays))

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pow2(typingctx, n):
    """``2.0 ** n`` for an integer-valued float32 ``n`` in [-126, 127], from its bits.

    Pure integer arithmetic and a bit cast, so loops around it still vectorise (the
    fast ``exp`` of the float32 kernels scales by it).
    """
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.shl(
            builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)),
            ir.Constant(i32, 23),
        )
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(n), codegen


@intrinsic
def num_threads(typingctx):
    """Numba's current thread count, from code that must stay cacheable.

    ``numba.get_num_threads()`` compiles to a ctypes pointer, which makes a function
    uncachable; this calls the threading layer's ``get_num_threads`` symbol by name
    (registered again on cache load through ``reload_init``).
    """
    from numba.np.ufunc.parallel import _launch_threads

    start_threads()

    def codegen(context, builder, sig, args):
        context.active_code_library._reload_init.add(_launch_threads)
        fnty = ir.FunctionType(cgutils.intp_t, [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.call(fn, [])

    return types.intp(), codegen


# ------------------------------------------------------------------ micro-kernel
def _make_microkernel(mr: int, nvec: int = NVEC):
    """The ``mr``-row micro-kernel, ``nvec`` vectors wide (``w = nvec * VW`` columns):
    ``C[i, 0:w] (+)= sum_k A[i, k] * P[k, 0:w]``.

    Arguments: ``a, ao, sai, sak`` (element ``(i, k)`` at ``a[ao + i*sai + k*sak]``),
    ``p, po`` (packed panel, ``w`` per ``k``), ``c, co, ldc`` (row ``i`` at
    ``co + i*ldc``), ``K``, ``acc`` (0: store, else add to ``C``), ``zero`` (a scalar
    of the element type). ``a``, ``p`` and ``c`` are data addresses (:func:`address`),
    not arrays: an array chosen per call (``A`` or its packed copy, ``C`` or a scratch
    tile) is a new reference each time, and the atomic reference counting of arrays
    shared by both threads cost 8 % of a single-threaded product and more on two.
    Bounds are the caller's job. Every column is the same chain of fused multiply-adds
    over ``k`` whatever the width, so narrow and wide kernels give the same bits.
    """

    @intrinsic
    def microkernel(typingctx, a, ao, sai, sak, p, po, c, co, ldc, K, acc, zero):
        if zero not in (types.float32, types.float64):
            return None
        sig = types.void(a, ao, sai, sak, p, po, c, co, ldc, K, acc, zero)
        if not all(isinstance(t, types.Integer) for t in sig.args[:-1]):
            return None

        def codegen(context, builder, sig, args):
            a, ao, sai, sak, p, po, c, co, ldc, kk, acc = (
                context.cast(builder, v, t, types.int64)
                for v, t in zip(args[:-1], sig.args[:-1], strict=True)
            )
            i64 = ir.IntType(64)
            et = context.get_data_type(sig.args[-1])
            esz = context.get_abi_sizeof(et)
            vw = VECTOR_BYTES // esz
            vt = ir.VectorType(et, vw)
            vpt = vt.as_pointer()
            aptr, pptr, cptr = (builder.inttoptr(v, et.as_pointer()) for v in (a, p, c))
            zero = ir.Constant(vt, [ir.Constant(et, 0.0)] * vw)
            undef = ir.Constant(vt, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
            # Accumulators as allocas: mem2reg turns them into loop-carried registers.
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nvec)]
                    for _ in range(mr)]
            nr = ir.Constant(i64, nvec * vw)
            # Prefetch (for writing) the lines of C this tile ends in, so that their
            # fetch overlaps the k loop: C of a large product is never in cache, and a
            # store that waits for its line stalls the next tile. Single- and
            # two-thread products of the LSTM's shapes ran 5-10 % faster with it.
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0i8")
            for i in range(mr):
                row = builder.add(co, builder.mul(ir.Constant(i64, i), ldc))
                for off in sorted({0, 64 // esz, nvec * vw - 1} & set(range(nvec * vw))):
                    ptr = builder.gep(cptr, [builder.add(row, ir.Constant(i64, off))])
                    builder.call(prefetch, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1),
                                            ir.Constant(i32, 3), ir.Constant(i32, 1)])
            with cgutils.for_range(builder, kk) as loop:
                k = loop.index
                pk = builder.add(po, builder.mul(k, nr))
                bvec = []
                for v in range(nvec):
                    ptr = builder.gep(pptr, [builder.add(pk, ir.Constant(i64, v * vw))])
                    bvec.append(builder.load(builder.bitcast(ptr, vpt), align=esz))
                ak = builder.add(ao, builder.mul(k, sak))
                for i in range(mr):
                    off = builder.add(ak, builder.mul(ir.Constant(i64, i), sai))
                    s = builder.load(builder.gep(aptr, [off]))
                    bc = builder.shuffle_vector(
                        builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)),
                        undef, splat,
                    )
                    for v in range(nvec):
                        prod = builder.fmul(bc, bvec[v], flags=_FLAGS)
                        old = builder.load(accs[i][v])
                        builder.store(builder.fadd(old, prod, flags=_FLAGS), accs[i][v])
            add = builder.icmp_signed("!=", acc, ir.Constant(i64, 0))
            for i in range(mr):
                for v in range(nvec):
                    off = builder.add(
                        co, builder.add(builder.mul(ir.Constant(i64, i), ldc),
                                        ir.Constant(i64, v * vw))
                    )
                    ptr = builder.bitcast(builder.gep(cptr, [off]), vpt)
                    val = builder.load(accs[i][v])
                    with builder.if_else(add) as (then, otherwise):
                        with then:
                            old = builder.load(ptr, align=esz)
                            builder.store(builder.fadd(old, val), ptr, align=esz)
                        with otherwise:
                            builder.store(val, ptr, align=esz)
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


def _make_dot(contiguous: bool):
    """``sum_k A.flat[ao + k*sak] * B.flat[bo + k]`` for ``k < K``, in a fixed order.

    The order is spelt out here, not left to LLVM: ``NDOT`` vector accumulators over
    blocks of ``NDOT`` vectors, then one over single vectors, summed pairwise, then the
    lanes in order, then the scalar tail. A loop ``s += a[k] * b[k]`` under ``reassoc``
    is vectorised however LLVM likes, and Numba links a private copy of every callee
    into each caller: copies optimised in different modules summed in different orders,
    and which copy a call reached depended on what the process had compiled (weak
    symbols: the first one loaded wins), so a cold and a cached run differed in the
    last bits; without ``reassoc`` that loop stays scalar. ``contiguous`` loads ``A``
    as vectors; otherwise lane by lane.
    """

    @intrinsic
    def dot(typingctx, A, ao, sak, B, bo, K):
        if not (isinstance(A, types.Array) and isinstance(B, types.Array)):
            return None
        if A.dtype != B.dtype or A.dtype not in (types.float32, types.float64):
            return None
        sig = A.dtype(A, ao, sak, B, bo, K)

        def codegen(context, builder, sig, args):
            a, ao, sak, b, bo, kk = args
            ao, sak, bo, kk = (context.cast(builder, v, sig.args[n], types.int64)
                               for v, n in zip((ao, sak, bo, kk), (1, 2, 4, 5), strict=True))
            et = context.get_data_type(sig.args[0].dtype)
            esz = context.get_abi_sizeof(et)
            vw = VECTOR_BYTES // esz
            vt = ir.VectorType(et, vw)
            i64 = ir.IntType(64)
            aptr = context.make_array(sig.args[0])(context, builder, a).data
            bptr = context.make_array(sig.args[3])(context, builder, b).data

            def vload_b(k):
                ptr = builder.gep(bptr, [builder.add(bo, k)])
                return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=esz)

            def vload_a(k):
                if contiguous:
                    ptr = builder.gep(aptr, [builder.add(ao, k)])
                    return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=esz)
                vec = ir.Constant(vt, ir.Undefined)
                for lane in range(vw):
                    off = builder.add(ao, builder.mul(builder.add(k, ir.Constant(i64, lane)),
                                                      sak))
                    vec = builder.insert_element(vec, builder.load(builder.gep(aptr, [off])),
                                                 ir.Constant(ir.IntType(32), lane))
                return vec

            def mac(acc, k):
                prod = builder.fmul(vload_a(k), vload_b(k), flags=_FLAGS)
                builder.store(builder.fadd(builder.load(acc), prod, flags=_FLAGS), acc)

            zero = ir.Constant(vt, [ir.Constant(et, 0.0)] * vw)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(NDOT)]
            big = ir.Constant(i64, NDOT * vw)
            nbig = builder.sdiv(kk, big)
            with cgutils.for_range(builder, nbig) as loop:
                k0 = builder.mul(loop.index, big)
                for v in range(NDOT):
                    mac(accs[v], builder.add(k0, ir.Constant(i64, v * vw)))
            done = builder.mul(nbig, big)
            nsmall = builder.sdiv(builder.sub(kk, done), ir.Constant(i64, vw))
            with cgutils.for_range(builder, nsmall) as loop:
                mac(accs[0], builder.add(done, builder.mul(loop.index, ir.Constant(i64, vw))))
            vals = [builder.load(acc) for acc in accs]
            while len(vals) > 1:  # pairwise: (a0 + a1) + (a2 + a3)
                vals = [builder.fadd(vals[i], vals[i + 1]) for i in range(0, len(vals), 2)]
            total = cgutils.alloca_once_value(
                builder, builder.extract_element(vals[0], ir.Constant(ir.IntType(32), 0)))
            for lane in range(1, vw):
                x = builder.extract_element(vals[0], ir.Constant(ir.IntType(32), lane))
                builder.store(builder.fadd(builder.load(total), x), total)
            start = builder.add(done, builder.mul(nsmall, ir.Constant(i64, vw)))
            with cgutils.for_range(builder, builder.sub(kk, start)) as loop:
                k = builder.add(start, loop.index)
                av = builder.load(builder.gep(aptr, [builder.add(ao, builder.mul(k, sak))]))
                bv = builder.load(builder.gep(bptr, [builder.add(bo, k)]))
                prod = builder.fmul(av, bv, flags=_FLAGS)
                builder.store(builder.fadd(builder.load(total), prod, flags=_FLAGS), total)
            return builder.load(total)

        return sig, codegen

    return dot


NDOT = 4  # vector accumulators of the dot product (hides the add latency)
_dot_contig = _make_dot(contiguous=True)
_dot_strided = _make_dot(contiguous=False)


_mk1 = _make_microkernel(1)
_mkm = _make_microkernel(MR_MID)
_mk4 = _make_microkernel(MR_MAX)
# Narrow kernels for a last panel of one or two vectors: a product with N = 32 columns
# is one full panel and one of 8 (float32), not two full ones with 16 columns of zeros.
_mk1_v1 = _make_microkernel(1, 1)
_mk4_v1 = _make_microkernel(MR_MAX, 1)
_mk1_v2 = _make_microkernel(1, 2)
_mk4_v2 = _make_microkernel(MR_MAX, 2)


@njit(cache=True, nogil=True, inline="always")
def kernel(m, a, ao, sai, sak, p, po, c, co, ldc, K, acc, zero):
    """``m`` rows of the full-width micro-kernel: tiles of MR_MAX rows, then (AVX-512's
    8-row tile) one of MR_MID = 4 where 4 or more rows remain, then single rows.

    Only these heights exist: each other height would be one more copy of the
    unrolled loop in every caller, and compile time grows with code size.
    """
    i = 0
    while i + MR_MAX <= m:
        _mk4(a, ao + i * sai, sai, sak, p, po, c, co + i * ldc, ldc, K, acc, zero)
        i += MR_MAX
    if MR_MAX > MR_MID and i + MR_MID <= m:
        _mkm(a, ao + i * sai, sai, sak, p, po, c, co + i * ldc, ldc, K, acc, zero)
        i += MR_MID
    while i < m:
        _mk1(a, ao + i * sai, sai, sak, p, po, c, co + i * ldc, ldc, K, acc, zero)
        i += 1


@njit(cache=True, nogil=True)
def kernel_nv(m, nv, a, ao, sai, sak, p, po, c, co, ldc, K, acc, zero):
    """:func:`kernel` for a panel ``nv`` vectors wide (``nv`` = 1 or 2).

    Only last panels come here (at most two per product and row block), so one loop
    choosing the kernel per block of rows is fast enough and keeps the code small.
    """
    i = 0
    while i < m:
        four = i + MR_MAX <= m
        ai, ci = ao + i * sai, co + i * ldc
        if nv == 2:
            if four:
                _mk4_v2(a, ai, sai, sak, p, po, c, ci, ldc, K, acc, zero)
            else:
                _mk1_v2(a, ai, sai, sak, p, po, c, ci, ldc, K, acc, zero)
        elif four:
            _mk4_v1(a, ai, sai, sak, p, po, c, ci, ldc, K, acc, zero)
        else:
            _mk1_v1(a, ai, sai, sak, p, po, c, ci, ldc, K, acc, zero)
        i += MR_MAX if four else 1


@njit(cache=True, nogil=True, inline="always")
def _panel_split(N, nr, vw):
    """``(wide, tail, ntail)``: ``wide`` panels of ``NVEC`` vectors, then ``ntail`` of
    ``tail`` vectors (see the layout in the module docstring)."""
    wide = N // nr
    tail = (N - wide * nr + vw - 1) // vw
    if tail == 1 and wide >= 1:
        return wide - 1, (NVEC + 1) // 2, 2  # NVEC + 1 = 4 vectors as two panels of two
    return wide, tail, 1 if tail > 0 else 0


@njit(cache=True, nogil=True, inline="always")
def panel_count(N, nr, vw):
    """Panels of a product with ``N`` columns."""
    wide, _, ntail = _panel_split(N, nr, vw)
    return wide + ntail


@njit(cache=True, nogil=True, inline="always")
def panel_at(N, jp, nr, vw):
    """``(first column, vectors)`` of panel ``jp`` of a product with ``N`` columns."""
    wide, tail, _ = _panel_split(N, nr, vw)
    if jp < wide:
        return jp * nr, NVEC
    return wide * nr + (jp - wide) * tail * vw, tail


# ------------------------------------------------------------------ products
@njit(cache=True, nogil=True, error_model="numpy")
def pack(Bs, bo, sbk, sbn, K, N, P):
    """Pack ``B[k, n] = Bs.flat[bo + k*sbk + n*sbn]`` (``K × N``) into panels ``P``.

    Panels as :func:`panel_at` lays them out (see the module docstring); ``P`` needs
    at most ``ceil(N / NR) * K * NR`` elements. Columns past ``N`` are
    zero so the micro-kernel may always compute whole vectors. The inner loop runs
    along whichever axis of ``B`` is contiguous (the other order reads a new cache line
    per element).
    """
    vw = VECTOR_BYTES // P.itemsize
    nr = NVEC * vw
    zero = P.dtype.type(0)
    uk = np.uint64(K)
    usbk, usbn = np.uint64(sbk), np.uint64(sbn)
    for jp in range(panel_count(N, nr, vw)):
        n0, nv = panel_at(N, jp, nr, vw)
        unr = np.uint64(nv * vw)
        w = np.uint64(min(nv * vw, N - n0))
        base = np.uint64(n0 * K)
        if sbk == 1:
            for jj in range(w):
                src = np.uint64(bo + n0 * sbn) + jj * usbn
                for k in range(uk):
                    P[base + k * unr + jj] = Bs[src + k]
        else:
            for k in range(uk):
                src = np.uint64(bo + n0 * sbn) + k * usbk
                dst = base + k * unr
                for jj in range(w):
                    P[dst + jj] = Bs[src + jj * usbn]
        for k in range(uk):
            for jj in range(w, unr):
                P[base + k * unr + jj] = zero


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def mm_packed(A, ao, lda, M, P, K, N, C, co, ldc, acc):
    """``C[i, :N'] (+)= A[i, :K] @ Bpacked`` for ``M`` rows, serial; ``N'`` is ``N``
    rounded up to whole vectors.

    The per-step recurrent product: ``P`` was packed once per sequence and ``C`` is a
    workspace padded to whole panels, so no edge handling is needed here.
    """
    vw = VECTOR_BYTES // P.itemsize
    nr = NVEC * vw
    zero = C.dtype.type(0)
    a, p, c = address(A), address(P), address(C)
    for jp in range(panel_count(N, nr, vw)):
        # All rows against one k-block of one panel while it is hot in L1 (KC rows of
        # the panel: see KC), then the next k-block adds to the same tiles of C.
        n0, nv = panel_at(N, jp, nr, vw)
        w = nv * vw
        for k0 in range(0, K, KC):
            kc = min(KC, K - k0)
            add = acc if k0 == 0 else 1
            po = n0 * K + k0 * w
            if nv == NVEC:
                kernel(M, a, ao + k0, lda, 1, p, po, c, co + n0, ldc, kc, add, zero)
            else:
                kernel_nv(M, nv, a, ao + k0, lda, 1, p, po, c, co + n0, ldc, kc, add, zero)


# Only ``contract``: its products are single ``acc + a*b`` terms, fused one way only.
@njit(cache=True, nogil=True, fastmath=set(_FLAGS), error_model="numpy")
def gemv(A, ao, sai, sak, M, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc):
    """``C (+)= A @ B`` for a few rows, straight from ``B`` (strides as in :func:`gemm`).

    With one or two rows each element of ``B`` is used once or twice, so packing it
    would cost as much as the product: batch-1 streaming runs here. The two loop
    orders keep the inner loop on whichever axis of ``B`` is contiguous.
    """
    # Indices are uint64: Numba wraps negative indices, and for an index like
    # ``ci + n`` of unknown sign that select per element keeps LLVM from vectorising
    # (one GRU step at H = 128 took 60 µs, 6 µs with unsigned indices).
    zero = C.dtype.type(0)
    un = np.uint64(N)
    for i in range(M):
        ci = np.uint64(co + i * ldc)
        ai = np.uint64(ao + i * sai)
        if sbk == 1:
            # Dot products along k (B is a transposed weight, rows contiguous).
            # In a fixed order (see _make_dot): never a reassociated reduction.
            usbn, ubo = np.uint64(sbn), np.uint64(bo)
            for n in range(un):
                bn = ubo + n * usbn
                if sak == 1:
                    s = _dot_contig(A, ai, 1, Bs, bn, K)
                else:
                    s = _dot_strided(A, ai, sak, Bs, bn, K)
                C[ci + n] = s + (C[ci + n] if acc != 0 else zero)
        else:
            # Row updates along n.
            if acc == 0:
                for n in range(un):
                    C[ci + n] = zero
            usbk, usbn, ubo = np.uint64(sbk), np.uint64(sbn), np.uint64(bo)
            for k in range(K):
                a = A[ao + i * sai + k * sak]
                bk = ubo + np.uint64(k) * usbk
                if sbn == 1:
                    for n in range(un):
                        C[ci + n] += a * Bs[bk + n]
                else:
                    for n in range(un):
                        C[ci + n] += a * Bs[bk + n * usbn]


@intrinsic
def _copy_tile_rows(typingctx, src, s, sstride, dst, d, n, zero):
    """For ``r < n``: ``dst[d + MR*r : d + MR*r + MR] = src[s + r*sstride : ... + MR]``
    (MR = MR_MAX), as one vector load and store per row (``src`` and ``dst`` are data
    addresses)."""
    if zero not in (types.float32, types.float64):
        return None
    sig = types.void(src, s, sstride, dst, d, n, zero)
    if not all(isinstance(t, types.Integer) for t in sig.args[:-1]):
        return None

    def codegen(context, builder, sig, args):
        src, s, sstride, dst, d, n = (context.cast(builder, v, t, types.int64)
                                      for v, t in zip(args[:-1], sig.args[:-1], strict=True))
        et = context.get_data_type(sig.args[-1])
        esz = context.get_abi_sizeof(et)
        vt = ir.VectorType(et, MR_MAX).as_pointer()
        sp, dp = (builder.inttoptr(v, et.as_pointer()) for v in (src, dst))
        with cgutils.for_range(builder, n) as loop:
            r = loop.index
            so = builder.add(s, builder.mul(r, sstride))
            do = builder.add(d, builder.mul(r, ir.Constant(ir.IntType(64), MR_MAX)))
            val = builder.load(builder.bitcast(builder.gep(sp, [so]), vt), align=esz)
            builder.store(val, builder.bitcast(builder.gep(dp, [do]), vt), align=esz)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _pack_a(A, ao, sai, sak, m, kc, Ap):
    """Copy an ``m × kc`` block of a k-strided ``A`` into MR_MAX-row micro-panels.

    ``Ap[(i // MR * kc + k) * MR + i % MR] = A[i, k]``: the micro-kernel then reads the
    MR rows of each ``k`` from one contiguous run instead of MR scattered cache lines
    (the ``dW = dG^T x`` products, where ``A`` is a transposed activation matrix, ran
    at 65% of the contiguous products' speed without this).
    """
    full = m // MR_MAX * MR_MAX
    u4, ukc = np.uint64(MR_MAX), np.uint64(kc)
    usak, usai = np.uint64(sak), np.uint64(sai)
    if sai == 1:
        # A is a transposed row-major matrix (rows k, contiguous along i): each k gives
        # the 4 rows of a micro-panel as one contiguous run, copied as one vector.
        # Blocks of 16 k: the cache lines read for one tile serve the next three, and
        # each tile's panel is written sequentially (row-by-row order wrote 32 streams
        # 8 KB apart, all in one L1 set).
        zero = Ap.dtype.type(0)
        a, ap = address(A), address(Ap)
        for kb in range(0, kc, 16):
            nk = min(16, kc - kb)
            for i0 in range(0, full, MR_MAX):
                _copy_tile_rows(a, ao + kb * sak + i0, sak, ap, (i0 * kc + kb * MR_MAX), nk, zero)
    else:
        for i0 in range(0, full, MR_MAX):
            ui0 = np.uint64(i0)
            for k in range(ukc):
                src = np.uint64(ao) + k * usak + ui0 * usai
                d = ui0 * ukc + k * u4
                for r in range(u4):
                    Ap[d + r] = A[src + r * usai]
    for i in range(full, m):  # the last, partial tile
        for k in range(kc):
            Ap[full * kc + k * MR_MAX + i - full] = A[ao + i * sai + k * sak]


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _gemm_rows(A, ao, sai, sak, r0, r1, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc, P, Ap,
               tile):
    """Rows ``r0:r1`` of :func:`gemm`, with this thread's panel and edge buffers."""
    vw = VECTOR_BYTES // P.itemsize
    nr = NVEC * vw
    npan = panel_count(N, nr, vw)
    zero = C.dtype.type(0)
    pack_a = sak != 1
    # Addresses, not arrays, pick the operands per tile: no reference counting.
    a_data, ap_data, p_data = address(A), address(Ap), address(P)
    c_data, tile_data = address(C), address(tile)
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        pack(Bs, bo + k0 * sbk, sbk, sbn, kc, N, P)
        add = acc if k0 == 0 else 1
        for i0 in range(r0, r1, MC):
            i1 = min(i0 + MC, r1)
            if pack_a:
                _pack_a(A, ao + i0 * sai + k0 * sak, sai, sak, i1 - i0, kc, Ap)
            for jp in range(npan):
                n0, nv = panel_at(N, jp, nr, vw)
                po = n0 * kc
                w = min(nv * vw, N - n0)
                for i in range(i0, i1, MR_MAX):
                    m = min(MR_MAX, i1 - i)
                    if pack_a:
                        src, a_off, a_si, a_sk = ap_data, (i - i0) * kc, 1, MR_MAX
                    else:
                        src, a_off, a_si, a_sk = a_data, ao + i * sai + k0 * sak, sai, sak
                    c_off = co + i * ldc + n0
                    # A panel of whole vectors is written in place; one that ends in
                    # a partial vector goes to a scratch tile, then its w valid
                    # columns are copied.
                    full = w == nv * vw
                    dst = c_data if full else tile_data
                    if nv == NVEC:
                        kernel(m, src, a_off, a_si, a_sk, p_data, po, dst,
                               c_off if full else 0, ldc if full else nr, kc,
                               add if full else 0, zero)
                    else:
                        kernel_nv(m, nv, src, a_off, a_si, a_sk, p_data, po, dst,
                                  c_off if full else 0, ldc if full else nr, kc,
                                  add if full else 0, zero)
                    if not full:
                        for ii in range(m):
                            for jj in range(w):
                                prev = C[c_off + ii * ldc + jj] if add != 0 else zero
                                C[c_off + ii * ldc + jj] = prev + tile[ii * nr + jj]


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
def gemm(A, ao, sai, sak, M, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc):
    """``C (+)= A @ B`` with general strides, rows split over Numba's threads.

    ``A[i, k] = A.flat[ao + i*sai + k*sak]`` (``M × K``), ``B[k, n] =
    Bs.flat[bo + k*sbk + n*sbn]`` (``K × N``), ``C[i, n] = C.flat[co + i*ldc + n]``;
    ``acc`` 0 overwrites ``C``, else adds to it. Exactly ``N`` columns are written.
    Each thread packs its own copy of ``B``: no synchronisation inside the product.
    """
    if M <= 0 or N <= 0:
        return
    if K <= 0:
        if acc == 0:
            for i in range(M):
                for n in range(N):
                    C[co + i * ldc + n] = 0
        return
    if M <= GEMV_MAX_ROWS:
        gemv(A, ao, sai, sak, M, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc)
        return
    nr = (NVEC * VECTOR_BYTES) // C.itemsize
    npan = (N + nr - 1) // nr
    nch = max(1, min(num_threads(), (M + MR_MAX - 1) // MR_MAX))
    if M * N * K < PARALLEL_MIN_WORK:
        nch = 1
    kc = min(KC, K)
    na = (MC + MR_MAX - 1) // MR_MAX * MR_MAX * kc if sak != 1 else 0
    if nch == 1:
        P = np.empty(npan * kc * nr, dtype=C.dtype)
        Ap = np.empty(na, dtype=C.dtype)
        tile = np.empty(MR_MAX * nr, dtype=C.dtype)
        _gemm_rows(A, ao, sai, sak, 0, M, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc, P, Ap,
                   tile)
        return
    for c in prange(nch):
        r0 = (c * M) // nch
        r1 = ((c + 1) * M) // nch
        P = np.empty(npan * kc * nr, dtype=C.dtype)
        Ap = np.empty(na, dtype=C.dtype)
        tile = np.empty(MR_MAX * nr, dtype=C.dtype)
        _gemm_rows(A, ao, sai, sak, r0, r1, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc, P, Ap,
                   tile)


@njit(cache=True, nogil=True, parallel=True)
def run_chunks(fn, nch, args):
    """Run ``fn(c, nch, args)`` for ``c`` in ``0..nch-1``, one block per thread."""
    if nch == 1:
        ccall(fn, 0, 1, args)  # batch 1: no thread hand-off at all
        return
    for c in prange(nch):
        ccall(fn, c, nch, args)


# ------------------------------------------------------------------ exports
@njit(cache=True, nogil=True)
def _span_jit(off, n1, s1, n2, s2):
    """Elements needed to hold index ``off + (n1-1)*s1 + (n2-1)*s2``."""
    if n1 <= 0 or n2 <= 0:
        return 0
    return off + (n1 - 1) * s1 + (n2 - 1) * s2 + 1

_I64 = types.int64


def _make_gemm(dtype: str):
    zero = np.dtype(dtype).type(0)

    def gemm_c(a, ao, sai, sak, m, k, b, bo, sbk, sbn, n, c, co, ldc, acc):
        A = carray(as_pointer(a, zero), _span_jit(ao, m, sai, k, sak))
        B = carray(as_pointer(b, zero), _span_jit(bo, k, sbk, n, sbn))
        C = carray(as_pointer(c, zero), _span_jit(co, m, ldc, n, 1))
        gemm(A, ao, sai, sak, m, k, B, bo, sbk, sbn, n, C, co, ldc, acc)

    return cfunc(types.void(*[_I64] * 15), cache=True)(gemm_c)


def _make_mm_packed(dtype: str):
    zero = np.dtype(dtype).type(0)
    nr = panel_width(dtype)

    def mm_packed_c(a, ao, lda, m, p, k, n, c, co, ldc, acc):
        A = carray(as_pointer(a, zero), _span_jit(ao, m, lda, k, 1))
        P = carray(as_pointer(p, zero), ((n + nr - 1) // nr) * k * nr)
        C = carray(as_pointer(c, zero), _span_jit(co, m, ldc, (n + nr - 1) // nr * nr, 1))
        mm_packed(A, ao, lda, m, P, k, n, C, co, ldc, acc)

    return cfunc(types.void(*[_I64] * 11), cache=True)(mm_packed_c)


def _make_pack(dtype: str):
    zero = np.dtype(dtype).type(0)
    nr = panel_width(dtype)

    def pack_c(b, bo, sbk, sbn, k, n, p):
        B = carray(as_pointer(b, zero), _span_jit(bo, k, sbk, n, sbn))
        P = carray(as_pointer(p, zero), ((n + nr - 1) // nr) * k * nr)
        pack(B, bo, sbk, sbn, k, n, P)

    return cfunc(types.void(*[_I64] * 7), cache=True)(pack_c)


def _make_run_chunks():
    def run_chunks_c(fn, nch, args):
        run_chunks(fn, nch, args)

    return cfunc(types.void(_I64, _I64, _I64), cache=True)(run_chunks_c)


keep_freed_memory()
start_threads()  # before any caller's parallel region: see threads.py
for _dt in ("float32", "float64"):
    provide(runtime_symbol("gemm", _dt), functools.partial(_make_gemm, _dt))
    provide(runtime_symbol("pack", _dt), functools.partial(_make_pack, _dt))
    provide(runtime_symbol("mm_packed", _dt), functools.partial(_make_mm_packed, _dt))
provide(runtime_symbol("run_chunks"), _make_run_chunks)
