"""Matrix products for the CPU kernels: an explicit-SIMD micro-kernel and a packed GEMM.

Why not BLAS. The recurrent product of one step is small (``B × H`` times ``H × 3H``),
and a BLAS call on it repacks the same weights every step; on the 2-core AMD EPYC of
``benchmarks/RESULTS.md`` scipy's OpenBLAS reached about 30 GFLOP/s on such a product
against about 68 for the micro-kernel below on weights packed once per sequence. BLAS
also brings its own thread pool, which competes for the cores with Numba's ``prange``
threads: with the products written here every kernel runs on Numba's threads alone.

The micro-kernel is a Numba ``@intrinsic`` that emits LLVM vector code directly
(Numba disables LLVM's SLP vectoriser, so unrolled scalar code would stay scalar):
``MR`` rows × ``NR`` columns of ``C`` held in ``MR × 3`` vector registers of 32 bytes
(``NR`` = 24 for float32, 12 for float64), one broadcast of ``A`` and three vector
loads of the packed ``B`` panel per ``k``. ``fmul``/``fadd`` carry LLVM's ``contract``
flag, so they fuse into FMA where the CPU has it and stay correct where it does not.

Packed panel layout (see :func:`pack`): ``P[(jp * K + k) * NR + jj] = B[k, jp * NR + jj]``,
zero where ``jp * NR + jj >= N``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# Fast-math flags for every kernel: fusing, reassociation and approximate functions,
# but not nnan/ninf, so NaN and infinity still propagate as IEEE says.
FASTMATH = {"contract", "arcp", "nsz", "afn", "reassoc"}
VECTOR_BYTES = 32  # one AVX register; LLVM splits it on narrower CPUs
NVEC = 3  # vectors per micro-kernel row
MR_MAX = 4  # rows per micro-kernel: 4 × 3 accumulators + 3 loads + 1 broadcast = 16 regs
KC = 256  # k-block of the packed GEMM: a 4 × KC tile of A and a KC × NR panel stay in L1
MC = 64  # row block of the packed GEMM: MC × KC of A stays in L2 across all panels

_FLAGS = ("contract",)


@intrinsic
def num_threads(typingctx):
    """Numba's current thread count, callable from cached parallel kernels.

    ``numba.get_num_threads()`` compiles to a ctypes pointer, which makes a function
    uncachable ("uses dynamic globals"); this calls the threading layer's exported
    ``get_num_threads`` symbol by name instead, which the cache can relink.
    """
    from numba.np.ufunc.parallel import _launch_threads

    _launch_threads()  # registers the symbol with LLVM

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(cgutils.intp_t, [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.call(fn, [])

    return types.intp(), codegen


def panel_width(dtype: str | np.dtype) -> int:
    """``NR``: columns of one packed panel (24 for float32, 12 for float64)."""
    return NVEC * VECTOR_BYTES // np.dtype(dtype).itemsize


def _make_microkernel(mr: int):
    """The ``mr``-row micro-kernel: ``C[i, 0:NR] (+)= sum_k A[i, k] * P[k, 0:NR]``.

    Arguments: ``A, ao, sai, sak`` (element ``(i, k)`` at ``A.flat[ao + i*sai + k*sak]``),
    ``P, po`` (packed panel, ``NR`` per ``k``), ``C, co, ldc`` (row ``i`` at
    ``co + i*ldc``), ``K``, ``acc`` (0: store, else add to ``C``). Arrays are only used
    for their data pointer, so any contiguous array of the right dtype will do; bounds
    are the caller's job.
    """

    @intrinsic
    def microkernel(typingctx, A, ao, sai, sak, P, po, C, co, ldc, K, acc):
        if not all(isinstance(t, types.Array) for t in (A, P, C)):
            return None
        if not (A.dtype == P.dtype == C.dtype) or A.dtype not in (types.float32, types.float64):
            return None
        sig = types.void(A, ao, sai, sak, P, po, C, co, ldc, K, acc)

        def codegen(context, builder, sig, args):
            a, ao, sai, sak, p, po, c, co, ldc, kk, acc = args
            aty, pty, cty = sig.args[0], sig.args[4], sig.args[6]
            i64 = ir.IntType(64)

            def as_i64(val, ty):
                return context.cast(builder, val, ty, types.int64)

            ao, sai, sak, po, co, ldc, kk, acc = (
                as_i64(v, sig.args[n])
                for v, n in zip((ao, sai, sak, po, co, ldc, kk, acc), (1, 2, 3, 5, 7, 8, 9, 10))
            )
            et = context.get_data_type(aty.dtype)
            esz = context.get_abi_sizeof(et)
            vw = VECTOR_BYTES // esz
            vt = ir.VectorType(et, vw)
            vpt = vt.as_pointer()
            aptr = context.make_array(aty)(context, builder, a).data
            pptr = context.make_array(pty)(context, builder, p).data
            cptr = context.make_array(cty)(context, builder, c).data
            zero = ir.Constant(vt, [ir.Constant(et, 0.0)] * vw)
            undef = ir.Constant(vt, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
            # Accumulators as allocas: mem2reg turns them into loop-carried registers.
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NVEC)]
                    for _ in range(mr)]
            nr = ir.Constant(i64, NVEC * vw)
            with cgutils.for_range(builder, kk) as loop:
                k = loop.index
                pk = builder.add(po, builder.mul(k, nr))
                bvec = []
                for v in range(NVEC):
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
                    for v in range(NVEC):
                        prod = builder.fmul(bc, bvec[v], flags=_FLAGS)
                        old = builder.load(accs[i][v])
                        builder.store(builder.fadd(old, prod, flags=_FLAGS), accs[i][v])
            add = builder.icmp_signed("!=", acc, ir.Constant(i64, 0))
            for i in range(mr):
                for v in range(NVEC):
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


_mk1 = _make_microkernel(1)
_mk2 = _make_microkernel(2)
_mk3 = _make_microkernel(3)
_mk4 = _make_microkernel(4)


@njit(cache=True, nogil=True, inline="always")
def kernel(m, A, ao, sai, sak, P, po, C, co, ldc, K, acc):
    """Dispatch ``m`` (1..4) rows to the matching micro-kernel."""
    if m >= 4:
        _mk4(A, ao, sai, sak, P, po, C, co, ldc, K, acc)
    elif m == 3:
        _mk3(A, ao, sai, sak, P, po, C, co, ldc, K, acc)
    elif m == 2:
        _mk2(A, ao, sai, sak, P, po, C, co, ldc, K, acc)
    elif m == 1:
        _mk1(A, ao, sai, sak, P, po, C, co, ldc, K, acc)


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def pack(Bs, bo, sbk, sbn, K, N, P):
    """Pack ``B[k, n] = Bs.flat[bo + k*sbk + n*sbn]`` (``K × N``) into panels ``P``.

    ``P`` needs ``ceil(N / NR) * K * NR`` elements; columns past ``N`` are zero so the
    micro-kernel may always compute whole panels.
    """
    nr = (NVEC * VECTOR_BYTES) // P.itemsize
    npan = (N + nr - 1) // nr
    zero = P.dtype.type(0)
    for jp in range(npan):
        n0 = jp * nr
        w = min(nr, N - n0)
        base = jp * K * nr
        if sbn == 1:
            # Rows of B are contiguous: copy a row segment per k.
            for k in range(K):
                src = bo + k * sbk + n0
                dst = base + k * nr
                for jj in range(w):
                    P[dst + jj] = Bs[src + jj]
                for jj in range(w, nr):
                    P[dst + jj] = zero
        else:
            # Columns of B are contiguous (B is a transposed weight): read along k.
            for jj in range(w):
                src = bo + (n0 + jj) * sbn
                for k in range(K):
                    P[base + k * nr + jj] = Bs[src + k * sbk]
            for jj in range(w, nr):
                for k in range(K):
                    P[base + k * nr + jj] = zero


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def mm_packed(A, ao, lda, M, P, K, npan, C, co, ldc, acc):
    """``C[i, :npan*NR] (+)= A[i, :K] @ Bpacked`` for ``M`` rows, serial.

    The per-step recurrent product: ``P`` was packed once per sequence and ``C`` is a
    workspace padded to whole panels, so no edge handling is needed here.
    """
    nr = (NVEC * VECTOR_BYTES) // P.itemsize
    for jp in range(npan):
        po = jp * K * nr
        for i in range(0, M, MR_MAX):
            kernel(min(MR_MAX, M - i), A, ao + i * lda, lda, 1, P, po,
                   C, co + i * ldc + jp * nr, ldc, K, acc)


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _gemm_rows(A, ao, sai, sak, r0, r1, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc, P, tile):
    """Rows ``r0:r1`` of :func:`gemm`, with this thread's panel and edge buffers."""
    nr = (NVEC * VECTOR_BYTES) // P.itemsize
    npan = (N + nr - 1) // nr
    zero = C.dtype.type(0)
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        pack(Bs, bo + k0 * sbk, sbk, sbn, kc, N, P)
        add = acc if k0 == 0 else 1
        for i0 in range(r0, r1, MC):
            i1 = min(i0 + MC, r1)
            for jp in range(npan):
                po = jp * kc * nr
                w = min(nr, N - jp * nr)
                for i in range(i0, i1, MR_MAX):
                    m = min(MR_MAX, i1 - i)
                    a_off = ao + i * sai + k0 * sak
                    c_off = co + i * ldc + jp * nr
                    if w == nr:
                        kernel(m, A, a_off, sai, sak, P, po, C, c_off, ldc, kc, add)
                    else:
                        # Last, partial panel: compute into a scratch tile, copy w columns.
                        kernel(m, A, a_off, sai, sak, P, po, tile, 0, nr, kc, 0)
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
    nr = (NVEC * VECTOR_BYTES) // C.itemsize
    npan = (N + nr - 1) // nr
    nch = max(1, min(num_threads(), (M + MR_MAX - 1) // MR_MAX))
    kc = min(KC, K)
    for c in prange(nch):
        r0 = (c * M) // nch
        r1 = ((c + 1) * M) // nch
        P = np.empty(npan * kc * nr, dtype=C.dtype)
        tile = np.empty(MR_MAX * nr, dtype=C.dtype)
        _gemm_rows(A, ao, sai, sak, r0, r1, K, Bs, bo, sbk, sbn, N, C, co, ldc, acc, P, tile)
