"""Correctness of every optimised path of the CPU kernels (never their speed).

The kernels take different routes by size, and each route is checked here:

- per-step products from packed weights (``T·B >= PACK_MIN_ROWS``) or read in place
  (fewer rows: batch-1 streaming);
- one block of rows (small problems, batch 1) or one per thread (``prange``);
- micro-kernel tails (rows per block not a multiple of 4, ``H`` not a multiple of the
  panel width), the big products' k- and row-blocking and their matrix-vector path;
- float32's vectorised ``tanh``/``sigmoid`` against float64's libm ones.

float64 runs every path through central finite differences (the oracle for the
gradients); float32 runs are compared with float64 ones on the same weights.
"""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from conftest import BUILTINS, as_tuple, input_size, random_state
from numba import cfunc

from gruablate import RecurrentLayer
from gruablate.backends.cpu import kernels as cpu
from gruablate.backends.cpu import runtime as cpu_runtime
from gruablate.cells import reference

# Minutes of compiling (every variant's float32 and threaded paths, compiled): left out of
# the quick subset.
pytestmark = pytest.mark.slow

# (T, B, I, H): matrix-vector steps, serial; packed steps with row and panel tails.
SMALL = (3, 2, 3, 4)
PACKED = (4, 5, 3, 5)
# Big enough for one block of rows per thread (work above PARALLEL_MIN_WORK), with
# 5 rows per block (4-row micro-kernel plus a 1-row tail) and H not a multiple of NR.
PARALLEL = (12, 10, 20, 70)


def _needs_threads(n: int) -> None:
    if n > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"needs a Numba pool of {n} threads")


def _setup(name, size, dtype, seed=1, scale=None):
    T, B, I, H = size
    I = input_size(name, I, H)
    rng = np.random.default_rng(seed)
    layer = RecurrentLayer(name, I, H, seed=3, dtype=dtype)
    # Default: weights of spectral radius about 1, so errors neither die nor explode
    # over time (with unbounded ReLU candidates, float32 rounding would be amplified).
    scale = 1.2 / np.sqrt(H + I) if scale is None else scale
    layer.flat_params[:] = rng.normal(0.0, scale, layer.flat_params.size)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    s0 = random_state(layer, B, rng)
    wy = rng.standard_normal((T, B, H)).astype(dtype)
    ws = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in layer.variant.state_names)
    return layer, x, s0, wy, ws


def _loss(layer, x, s0, wy, ws) -> float:
    y, last = layer.forward(x, s0)
    total = float((wy.astype(np.float64) * y).sum())
    for w, s in zip(ws, as_tuple(last), strict=True):
        total += float((w.astype(np.float64) * s).sum())
    return total


def _grads(layer, x, s0, wy, ws):
    y, last = layer.forward(x, s0)
    dx, ds0, _ = layer.backward(wy, ws if len(ws) > 1 else ws[0])
    return y, last, dx.copy(), tuple(d.copy() for d in as_tuple(ds0)), layer.flat_grads.copy()


@pytest.mark.parametrize("size", [SMALL, PACKED], ids=["in-place", "packed"])
@pytest.mark.parametrize("name", BUILTINS)
def test_float64_finite_differences(name, size):
    layer, x, s0, wy, ws = _setup(name, size, "float64", scale=0.6)
    _, _, dx, _, g = _grads(layer, x, s0, wy, ws)
    eps = 1e-6
    num = np.zeros_like(g)
    for k in range(g.size):
        old = layer.flat_params[k]
        layer.flat_params[k] = old + eps
        lp = _loss(layer, x, s0, wy, ws)
        layer.flat_params[k] = old - eps
        lm = _loss(layer, x, s0, wy, ws)
        layer.flat_params[k] = old
        num[k] = (lp - lm) / (2 * eps)
    num_x = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        lp = _loss(layer, x, s0, wy, ws)
        x[idx] = old - eps
        lm = _loss(layer, x, s0, wy, ws)
        x[idx] = old
        num_x[idx] = (lp - lm) / (2 * eps)
    assert np.abs(g - num).max() < 2e-7 * max(1.0, np.abs(num).max())
    assert np.abs(dx - num_x).max() < 2e-7 * max(1.0, np.abs(num_x).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", BUILTINS)
def test_thread_blocks_match_one_block(name, dtype):
    """One block of rows per thread gives what one block gives (bias sums aside)."""
    _needs_threads(2)
    layer, x, s0, wy, ws = _setup(name, PARALLEL, dtype)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _grads(layer, x, s0, wy, ws)
        numba.set_num_threads(2)
        two = _grads(layer, x, s0, wy, ws)
        numba.set_num_threads(old)
        inf_two = layer.forward(x, s0, keep=False)[0]
    finally:
        numba.set_num_threads(old)
    # Only the order of the per-thread bias sums differs: rounding, relative to the
    # largest entry (the ReLU variant's gradients reach thousands).
    eps = 1e-12 if dtype == "float64" else 1e-5

    def close(u, v):
        np.testing.assert_allclose(u, v, rtol=eps, atol=eps * max(1.0, np.abs(v).max()))

    for a, b in zip(one[:2], two[:2], strict=True):
        for u, v in zip(as_tuple(a), as_tuple(b), strict=True):
            close(u, v)
    close(one[2], two[2])
    close(one[4], two[4])
    close(inf_two, two[0])


@pytest.mark.parametrize("size", [SMALL, PACKED, PARALLEL], ids=["in-place", "packed", "par"])
@pytest.mark.parametrize("name", BUILTINS)
def test_float32_paths_match_float64(name, size):
    """float32 (fast tanh/sigmoid, float32 products) against float64 on the same weights."""
    l64, x, s0, wy, ws = _setup(name, size, "float64")
    l32 = RecurrentLayer(name, l64.input_size, l64.hidden_size, dtype="float32")
    l32.flat_params[:] = l64.flat_params
    f32 = lambda a: tuple(v.astype(np.float32) for v in a) if isinstance(a, tuple) else (
        a.astype(np.float32))
    r64 = _grads(l64, x, s0, wy, ws)
    r32 = _grads(l32, f32(x), f32(s0), f32(wy), f32(ws))
    np.testing.assert_allclose(r32[0], r64[0], rtol=1e-4, atol=2e-5)
    for a, b in zip(as_tuple(r32[1]), as_tuple(r64[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    scale = max(1.0, np.abs(r64[4]).max())
    np.testing.assert_allclose(r32[2], r64[2], rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(r32[4], r64[4], rtol=1e-3, atol=1e-4 * scale)
    # Inference (no activations kept) takes the same values.
    y_inf = l32.forward(f32(x), f32(s0), keep=False)[0]
    np.testing.assert_allclose(y_inf, r32[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["gru", "gru_reset_after", "lstm", "mgu", "mingru"])
def test_parallel_size_matches_reference(name, dtype):
    layer, x, s0, _, _ = _setup(name, PARALLEL, dtype)
    y, _ = layer.forward(x, s0)
    p64 = {k: v.astype(np.float64) for k, v in layer.params.items()}
    s64 = tuple(s.astype(np.float64) for s in as_tuple(s0))
    y_ref, _ = reference.forward(layer.variant, p64, x.astype(np.float64),
                                 s64 if len(s64) > 1 else s64[0])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=5e-5, atol=5e-5)
    np.testing.assert_allclose(y, y_ref, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["gru", "lstm", "mingru"])
def test_batch1_streaming_matches_whole_sequence(name, dtype):
    """One step per call (matrix-vector products, one block) equals one call over T."""
    layer, x, s0, _, _ = _setup(name, (20, 1, 6, 33), dtype)
    y, last = layer.forward(x, s0, keep=False)
    state = s0
    for t in range(x.shape[0]):
        yt, state = layer.forward(x[t : t + 1], state, keep=False)
        # Products in place (one step) and packed (the sequence) sum in other orders.
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(yt[0], y[t], rtol=tol, atol=tol)
    for a, b in zip(as_tuple(state), as_tuple(last), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _fast_functions():
    mod = cpu.kernels(RecurrentLayer("gru", 1, 1).variant, "float32")
    return mod.tanh, mod.sigmoid


def test_float32_fast_tanh_and_sigmoid_accuracy():
    tanh, sigmoid = _fast_functions()
    xs = np.concatenate([np.linspace(-30, 30, 20001), np.geomspace(1e-8, 30, 5001),
                         -np.geomspace(1e-8, 30, 5001)]).astype(np.float32)
    x64 = xs.astype(np.float64)
    t = np.array([tanh(v) for v in xs], dtype=np.float64)
    s = np.array([sigmoid(v) for v in xs], dtype=np.float64)
    t_ref, s_ref = np.tanh(x64), 1.0 / (1.0 + np.exp(-x64))
    assert np.abs(t - t_ref).max() < 3e-7
    # Relative to the value (tiny sigmoids included): a few float32 ulps.
    assert (np.abs(t - t_ref) / np.maximum(np.abs(t_ref), 1e-30)).max() < 6e-7
    assert (np.abs(s - s_ref) / s_ref).max() < 4e-7
    assert np.abs(t).max() <= 1.0 and s.min() >= 0.0 and s.max() <= 1.0


def test_float32_fast_functions_keep_nan_and_infinity():
    tanh, sigmoid = _fast_functions()
    f = np.float32
    assert np.isnan(tanh(f(np.nan))) and np.isnan(sigmoid(f(np.nan)))
    assert tanh(f(np.inf)) == 1.0 and tanh(f(-np.inf)) == -1.0
    assert sigmoid(f(np.inf)) == 1.0 and sigmoid(f(-np.inf)) < 1e-37


@pytest.mark.parametrize("size", [SMALL, PARALLEL], ids=["in-place", "par"])
def test_nan_weight_propagates_in_float32(size):
    layer, x, s0, _, _ = _setup("gru", size, "float32")
    layer.params["U_u"][0, 0] = np.nan
    y, _ = layer.forward(x, s0)
    assert np.isnan(y[-1]).any()


GEMM_SHAPES = [  # M, K, N: matrix-vector rows, tails, k-blocks (K > KC), row blocks
    (1, 7, 5), (3, 30, 25), (4, 1, 1), (5, 13, 24), (9, 600, 50), (300, 40, 70), (130, 520, 30),
    # last panels of whole vectors (the narrow kernels) in float32 and float64
    (6, 9, 32), (7, 33, 40), (5, 3, 16), (4, 2, 8), (13, 5, 20),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "M{}K{}N{}".format(*s))
def test_gemm_matches_numpy(shape, dtype):
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K)
    A = rng.standard_normal((M, K)).astype(dtype)
    Bm = rng.standard_normal((K, N)).astype(dtype)
    ref = A.astype(np.float64) @ Bm.astype(np.float64)
    tol = 1e-12 if dtype == "float64" else 1e-5
    scale = np.abs(A).max() * np.abs(Bm).max() * K
    # Row-major A and B, C overwritten (a guard value beyond C must survive).
    C = np.full(M * N + 1, 7, dtype)
    cpu_runtime.gemm(A.reshape(-1), 0, K, 1, M, K, Bm.reshape(-1), 0, N, 1, N, C, 0, N, 0)
    np.testing.assert_allclose(C[:-1].reshape(M, N), ref, atol=tol * scale, rtol=0)
    assert C[-1] == 7
    # Transposed A and B (the weight-gradient and input products), C accumulated.
    At, Bt = np.ascontiguousarray(A.T), np.ascontiguousarray(Bm.T)
    C2 = np.ones((M, N), dtype)
    cpu_runtime.gemm(At.reshape(-1), 0, 1, M, M, K, Bt.reshape(-1), 0, 1, K, N,
                     C2.reshape(-1), 0, N, 1)
    np.testing.assert_allclose(C2 - 1, ref, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("N", [1, 4, 8, 12, 16, 20, 24, 32, 40, 45, 64, 72])
def test_packed_product_matches_numpy_and_wide_panels_bit_for_bit(N, dtype):
    """The per-step product on packed weights, for every width of the last panel.

    A last panel of one or two vectors runs a narrower micro-kernel than the full ones;
    each column is the same chain of multiply-adds either way, so the first N columns
    must equal, to the bit, those of a product with more columns.
    """
    M, K = 7, 19
    rng = np.random.default_rng(N)
    A = rng.standard_normal((M, K)).astype(dtype)
    Bm = rng.standard_normal((K, N + 24)).astype(dtype)
    nr = cpu_runtime.panel_width(dtype)

    def product(n: int) -> np.ndarray:
        npan = (n + nr - 1) // nr
        P = np.full(npan * K * nr, np.nan, dtype)
        Bn = np.ascontiguousarray(Bm[:, :n])
        cpu_runtime.pack(Bn.reshape(-1), 0, n, 1, K, n, P)
        C = np.full((M, npan * nr + 1), 7, dtype)  # the last column is a guard
        cpu_runtime.mm_packed(A.reshape(-1), 0, K, M, P, K, n, C.reshape(-1), 0,
                              npan * nr + 1, 0)
        assert (C[:, -1] == 7).all()
        vw = cpu_runtime.VECTOR_BYTES // np.dtype(dtype).itemsize
        written = (n // nr) * nr + -(-(n % nr) // vw) * vw
        assert (C[:, written:-1] == 7).all(), "wrote past the last panel's vectors"
        return C[:, :n]

    got = product(N)
    ref = A.astype(np.float64) @ Bm[:, :N].astype(np.float64)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max() * K, rtol=0)
    np.testing.assert_array_equal(got, product(N + 24)[:, :N])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_panels_tile_the_columns_and_none_is_one_vector_beside_a_wide_one(dtype):
    """The packed layout: panels follow each other without gaps, cover every column,
    and a one-vector panel (4 accumulators: half speed) appears only when the whole
    product is one vector wide."""
    nr = cpu_runtime.panel_width(dtype)
    vw = cpu_runtime.VECTOR_BYTES // np.dtype(dtype).itemsize
    for N in range(1, 8 * nr):
        count = cpu_runtime.panel_count(N, nr, vw)
        col = 0
        for jp in range(count):
            n0, nv = cpu_runtime.panel_at(N, jp, nr, vw)
            assert n0 == col and 1 <= nv <= cpu_runtime.NVEC
            assert nv > 1 or vw >= N, (N, jp)
            col += nv * vw
        assert N <= col < N + vw  # every column, padded only to whole vectors
        assert col <= -(-N // nr) * nr  # fits the buffers sized ceil(N / NR) panels


def test_gemm_with_empty_k_clears_or_keeps_c():
    A = np.zeros(4, np.float32)
    C = np.full((2, 3), 5, np.float32)
    cpu_runtime.gemm(A, 0, 0, 1, 2, 0, A, 0, 3, 1, 3, C.reshape(-1), 0, 3, 1)
    assert (C == 5).all()
    cpu_runtime.gemm(A, 0, 0, 1, 2, 0, A, 0, 3, 1, 3, C.reshape(-1), 0, 3, 0)
    assert (C == 0).all()


_DOUBLE_MATH = re.compile(r"= (?:fadd|fsub|fmul|fdiv|frem|fneg|fpext|fptrunc)\b[^\n]*double")


@pytest.mark.parametrize("name", ["gru", "lstm", "ligru", "mgu"])
def test_float32_kernels_do_no_float64_arithmetic(name):
    """No float64 constant or temporary sneaks into the float32 kernels' arithmetic.

    The per-variant row functions (all the cell arithmetic and the per-step products)
    are compiled afresh here, uncached, because Numba cannot show cached code's IR.
    """
    mod = cpu.kernels(RecurrentLayer(name, 3, 4).variant, "float32")
    for fn in (mod._forward_rows, mod._backward_rows):
        compiled = cfunc(mod._ROWS_SIG, fastmath=cpu_runtime.FASTMATH, error_model="numpy")(fn)
        found = _DOUBLE_MATH.findall(compiled.inspect_llvm())
        assert not found, (fn.__name__, found[:3])
