"""The CUDA backend, proven without a GPU and, where there is one, on it.

Three kinds of evidence, each meaningful on a machine with no GPU:

1. **Real compiler.** Every kernel of every built-in variant compiled by NVVM to PTX
   for ``sm_90`` (``numba.cuda.compile_ptx`` needs no GPU): in float32 at the default
   tiles, and a few cells of each kind also in float64 and at the other tiles. A kernel
   only the simulator accepts fails here. The PTX must use no local memory: the
   per-thread accumulators are meant to live in registers.
2. **Simulator.** ``NUMBA_ENABLE_CUDASIM=1`` runs the kernels in Python; it must be set
   before ``numba.cuda`` is first imported, so it runs in subprocesses (this file is
   also their script: ``python tests/test_cuda.py --compare NAME ...``). Forward
   (training and inference) and backward of every built-in variant (once with rows of
   every kind of length: whole, one step, none), of user specs
   that reach the other code paths, and of cells written as equations (the kernels
   printed from their graphs) are compared with the float64 CPU backend.
3. **Unavailability.** Without a GPU, or without numba-cuda, asking for
   ``backend="cuda"`` gives one clear error and the rest of gruablate still works.

On a machine with a GPU, :func:`test_gpu_matches_cpu` runs the same comparison for
real, at sizes that span several tiles and blocks (``benchmarks/gpu.sh`` runs this
file there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _cudasim import gpu_present, simulate  # tests/ is on sys.path
from test_equations import CELLS as EQUATION_CELLS
from test_equations_fuzz import random_cell
from test_layernorm import OWN_CELL as LN_CELL

import gruablate

# Minutes of compiling (CUDA simulator runs, PTX): left out of the quick subset.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = gruablate.list_variants()

# User specs that reach code paths no built-in does: an LSTM with no recurrent weight
# (the scan kernels with a cell state) and a GRU whose gates see only the state, with
# an uncoupled update, reset after the product and a ReLU candidate.
USER_SPECS = {
    "user_lstm_scan": {
        "name": "user_lstm_scan",
        "family": "lstm",
        "gate_inputs": "xb",
        "candidate_inputs": "x",
        "candidate_activation": "identity",
    },
    "user_gru_hb_after": {
        "name": "user_gru_hb_after",
        "family": "gru",
        "reset": "after",
        "update": "uncoupled",
        "gate_inputs": "hb",
        "candidate_activation": "relu",
    },
}

# Cells written as equations beyond the catalogue (every kernel is printed from a cell's
# graph, backends/cuda/cell_source.py; a switch built-in's is that of its rendered
# equations, so writing those out as a spec would print the same kernels again): the
# cells of the papers in tests/test_equations.py (peepholes, gates carried as states, x
# read element-wise, division, diagonal recurrence), random cells (several passes,
# products on computed values and on extra states, parameters-only values), and a cell
# with row means between its products (tests/test_layernorm.py).
SWITCH_BUILTINS = [n for n in BUILTINS if not gruablate.get_variant(n).is_equations]
_CATALOGUED = {gruablate.get_variant(n).cell_equations for n in BUILTINS} - {None, ()}
EQUATION_SPECS = {
    # (the cells the catalogue has as built-ins run with the built-ins)
    **{n: {"name": n, "equations": list(cell[0])} for n, cell in EQUATION_CELLS.items()
       if gruablate.Variant.from_dict({"name": n, "equations": list(cell[0])}).cell_equations
       not in _CATALOGUED},
    **{f"random{s}": {"name": f"random{s}", "equations": random_cell(s)} for s in (3, 7, 11)},
    # row means in the middle of a step, a product on a normalised value
    "own_ln": {"name": "own_ln", "equations": LN_CELL},
}

# Largest error allowed against the float64 CPU backend, relative to the largest
# magnitude of the compared array (at least 1): float64 differs only by summation
# order; float32 by its rounding, accumulated over sums of a few hundred terms. A
# wrong index or a missing term gives errors of the order of the values themselves.
TOL = {"float64": 1e-10, "float32": 1e-4}


def _variant(name: str) -> gruablate.Variant:
    if name in USER_SPECS:
        return gruablate.Variant.from_dict(USER_SPECS[name])
    if name in EQUATION_SPECS:
        return gruablate.Variant.from_dict(EQUATION_SPECS[name])
    return gruablate.get_variant(name)


def compare_with_cpu(
    name: str, dtype: str, T: int, B: int, I: int, H: int, seed: int = 0,
    lengths: list[int] | None = None, zoneout: bool = False,
) -> list[str]:
    """Run ``name`` on the CUDA backend and on the float64 CPU backend; list the mismatches.

    The CUDA layer holds ``dtype`` parameters and inputs; the CPU layer gets the same
    values in float64, so a float32 run is judged against exact arithmetic. With
    ``lengths`` both run each row over its own steps only; with ``zoneout`` both run
    the cell printed with zoneout on ``h``, with random weights in [0, 1].
    """
    variant = _variant(name)
    if variant.is_equations and variant.cell.reads_x:
        I = H  # the cell reads x element-wise
    gpu = gruablate.RecurrentLayer(variant, I, H, seed=seed, dtype=dtype, backend="cuda")
    cpu = gruablate.RecurrentLayer(variant, I, H, dtype="float64")
    cpu.flat_params[:] = gpu.flat_params
    rng = np.random.default_rng(seed + 1)
    S = len(variant.state_names)

    def draw(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    def state(parts: list[np.ndarray]):
        return tuple(parts) if S > 1 else parts[0]

    x, dy = draw(T, B, I), draw(T, B, H)
    mask = rng.uniform(0.0, 1.0, (T, B, H)).astype(dtype) if zoneout else None
    mask64 = None if mask is None else mask.astype("float64")
    s0 = [draw(B, H) for _ in range(S)]
    dsT = [draw(B, H) for _ in range(S)]
    up = [a.astype("float64") for a in s0]
    dup = [a.astype("float64") for a in dsT]

    y_ref, sT_ref = cpu.forward(x.astype("float64"), state(up), lengths=lengths,
                                zoneout=mask64)
    dx_ref, ds0_ref, g_ref = cpu.backward(dy.astype("float64"), state(dup))
    y_inf, sT_inf = gpu.forward(x, state(s0), keep=False, lengths=lengths, zoneout=mask)
    y, sT = gpu.forward(x, state(s0), lengths=lengths, zoneout=mask)
    dx, ds0, g = gpu.backward(dy, state(dsT))

    def pairs(a, b):
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        return zip(a, b, strict=True)

    checks = [
        ("y", y, y_ref),
        ("y (inference)", y_inf, y_ref),
        *((f"last state[{k}]", p, q) for k, (p, q) in enumerate(pairs(sT, sT_ref))),
        *((f"last state[{k}] (inference)", p, q) for k, (p, q) in enumerate(pairs(sT_inf, sT_ref))),
        ("dx", dx, dx_ref),
        *((f"dstate0[{k}]", p, q) for k, (p, q) in enumerate(pairs(ds0, ds0_ref))),
        *((f"grad {k}", g[k], g_ref[k]) for k in g_ref),
    ]
    tol = TOL[dtype]
    bad = []
    for what, got, ref in checks:
        if got.dtype != np.dtype(dtype) or got.shape != ref.shape:
            bad.append(f"{name} {dtype} {what}: got {got.dtype}{got.shape}, want {ref.shape}")
            continue
        err = float(np.max(np.abs(got.astype("float64") - ref)))
        lim = tol * max(1.0, float(np.max(np.abs(ref))))
        if not err <= lim:  # also catches NaN
            bad.append(f"{name} {dtype} {what}: max abs error {err:.3g} > {lim:.3g}")
    return bad


# --------------------------------------------------------------- 1. real compiler
def _assert_sm90(ptx: dict[str, str], expect: tuple[str, ...], threads: int = 0) -> None:
    assert sorted(ptx) == sorted(expect)
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert f"{name}" in text, name
        # Accumulators and gate values must stay in registers.
        assert ".local" not in text, f"{name} uses local memory"
        if threads:  # launch bounds: ptxas fits the registers to the block size
            assert f".maxntid {threads}," in text, f"{name} has no launch bounds of {threads}"


def test_tiles_shrink_to_small_batches():
    from gruablate.backends.cuda.source import DEFAULT_GEOMETRY as geo
    from gruablate.backends.cuda.source import Geometry

    narrow, wide = Geometry(bm=8, jc=1), Geometry(bm=4, jc=2)
    batches = (1, 2, 3, 4, 5, 8, 64)
    assert [narrow.for_batch(B).bm for B in batches] == [1, 2, 4, 4, 8, 8, 8]
    assert {narrow.for_batch(B).jc for B in batches} == {1}
    # Two columns per lane only where the batch spans more than one tile of rows...
    assert [wide.for_batch(B).bm for B in batches] == [1, 2, 4, 4, 4, 4, 4]
    assert [wide.for_batch(B).jc for B in batches] == [1, 1, 1, 1, 2, 2, 2]
    # ... so the number of tiles (blocks at work) is the narrow geometry's at every batch.
    for B in batches:
        tiles = [-(-B // g.bm) * -(-512 // g.tile_cols) for g in (narrow.for_batch(B),
                                                              wide.for_batch(B))]
        assert tiles[0] == tiles[1], B
    for g in (narrow, wide, geo):
        assert g.for_batch(64) is g
        assert len({g.for_batch(B).key for B in range(1, 65)}) == 4  # modules per variant
    with pytest.raises(ValueError, match="bm \\* jc must be at most nw"):
        Geometry(nw=4, bm=8)
    with pytest.raises(ValueError, match="bm \\* jc must be at most nw"):
        Geometry(nw=8, bm=8, jc=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_common_kernels_compile_to_ptx(real_cuda, dtype):
    from gruablate.backends.cuda.kernels import compile_ptx
    from gruablate.backends.cuda.source import COMMON_KERNELS

    _assert_sm90(compile_ptx(None, dtype, cc=(9, 0)), COMMON_KERNELS)


@pytest.mark.parametrize("name", SWITCH_BUILTINS)
def test_variant_kernels_compile_to_ptx(real_cuda, name):
    from gruablate.backends.cuda.cell_source import CELL_KERNELS
    from gruablate.backends.cuda.kernels import compile_ptx
    from gruablate.backends.cuda.source import DEFAULT_GEOMETRY as geo

    variant = gruablate.get_variant(name)
    recurrent = not variant.cell.is_scan
    # float32 at the default tiles; for a cell of each shape of pass (gru: a reset
    # gate between two rounds of products, lstm: one round, two states, mingru: no
    # recurrent product) also float64, the one-row tiles of batch 1 (the other row
    # counts differ from these only in constants) and the other column count per lane,
    # which differ from the default in constants and types only.
    other = replace(geo, bm=8, jc=1) if geo.jc > 1 else replace(geo, bm=4, jc=2)
    runs = [("float32", geo)]
    if name in ("gru", "lstm", "mingru"):
        runs += [("float64", geo), ("float32", geo.for_batch(1)), ("float32", other)]
    for dtype, g in runs:
        ptx = compile_ptx(variant, dtype, cc=(9, 0), geo=g)
        _assert_sm90(ptx, CELL_KERNELS, g.threads if recurrent else g.ew_threads)
        # Variants with recurrent weights run one persistent cooperative kernel per
        # pass, which must synchronise the grid; the scan needs no sync.
        for kernel in CELL_KERNELS:
            assert ("cudaCGSynchronize" in ptx[kernel]) == recurrent, (name, dtype, kernel)


@pytest.mark.parametrize("name", sorted(set(BUILTINS) - set(SWITCH_BUILTINS))
                         + sorted(EQUATION_SPECS))
def test_equations_kernels_compile_to_ptx(real_cuda, name):
    """The kernels printed from each cell written as equations (the catalogue's, the
    papers' cells of tests/test_equations.py, random ones) compile for a real GPU, keep
    their accumulators in registers and carry their launch bounds."""
    from gruablate.backends.cuda.cell_source import CELL_KERNELS
    from gruablate.backends.cuda.kernels import compile_ptx
    from gruablate.backends.cuda.source import DEFAULT_GEOMETRY as geo

    variant = _variant(name)
    recurrent = not variant.cell.is_scan
    runs = [("float32", geo)]
    if name in ("mut3", "greff_vanilla"):  # the rest differ from these in constants only
        runs += [("float64", geo), ("float32", geo.for_batch(1))]
    for dtype, g in runs:
        ptx = compile_ptx(variant, dtype, cc=(9, 0), geo=g)
        _assert_sm90(ptx, CELL_KERNELS, g.threads if recurrent else g.ew_threads)
        for kernel in CELL_KERNELS:
            assert ("cudaCGSynchronize" in ptx[kernel]) == recurrent, (name, dtype, kernel)


def test_zoneout_kernels_compile_to_ptx(real_cuda):
    """A cell printed with zoneout on h (MUT3: three groups in two rounds)."""
    from gruablate.backends.cuda.cell_source import CELL_KERNELS
    from gruablate.backends.cuda.kernels import compile_ptx
    from gruablate.backends.cuda.source import DEFAULT_GEOMETRY as geo

    ptx = compile_ptx(gruablate.get_variant("mut3"), "float32", cc=(9, 0), zoneout=True)
    _assert_sm90(ptx, CELL_KERNELS, geo.threads)


# ------------------------------------------------------------------- 2. simulator
# The simulator work is split in a few subprocesses so pytest-xdist can spread them.
SIM_CHUNKS = [BUILTINS[i::3] for i in range(3)] + [sorted(USER_SPECS)]
SIM_CHUNKS += [sorted(EQUATION_SPECS)[i::3] for i in range(3)]


# Every cell runs in float64, which checks its logic; float32 changes only the element
# type of the same printed kernels, so the simulator runs it for a built-in cell of each
# shape of pass (and every user and equations spec); a GPU runs every cell in both.
SIM_FLOAT32 = {"gru", "lstm", "mingru", "gru_ln", "mut3", "sru"}


def _sim_dtypes(name: str) -> tuple[str, ...]:
    return tuple(TOL) if name in SIM_FLOAT32 or name not in BUILTINS else ("float64",)


@pytest.mark.parametrize("names", SIM_CHUNKS, ids=lambda names: "+".join(names))
def test_simulator_matches_cpu(names):
    """Forward, inference and backward of each variant in the simulator (float64; float32
    for the cells of :data:`SIM_FLOAT32` and the specs)."""
    report = simulate(__file__, "--compare", *names)
    assert sorted(report["ran"]) == sorted(f"{n} {d}" for n in names for d in _sim_dtypes(n))
    assert not report["bad"], "\n".join(report["bad"])


def test_simulator_matches_cpu_with_gpu_geometry():
    """The geometry a GPU runs (512 threads, 4 × 64 tiles, two columns per lane) in the
    simulator, on sizes with three row tiles, two column tiles and partial ones, for a
    variant with both forward phases (reset before the product, two gates in the main
    product), and the same cell and MUT3 (three groups in two rounds) printed from
    their equations."""
    report = simulate(__file__, "--gpu-geometry", "--compare", "gru", "mut3")
    assert report["ran"] == ["gru float64", "mut3 float64"]
    assert not report["bad"], "\n".join(report["bad"])


def test_simulator_matches_cpu_with_zoneout():
    """The kernels printed with zoneout on ``h`` (the reset-before GRU's two passes, the
    LSTM's second state, MUT3's three groups in two rounds), both dtypes, rows of
    every kind of length, against the CPU's zoneout kernels."""
    report = simulate(__file__, "--zoneout", "--compare", "gru", "lstm", "mut3")
    assert sorted(report["ran"]) == sorted(f"{n} {d}" for n in ("gru", "lstm", "mut3")
                                           for d in TOL)
    assert not report["bad"], "\n".join(report["bad"])


# ------------------------------------------------------------ 3. no GPU / no package
def test_clear_error_without_gpu(real_cuda):
    from gruablate.errors import CudaUnavailableError

    if real_cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CudaUnavailableError, match=r"^backend='cuda' needs an NVIDIA GPU") as e:
        gruablate.RecurrentLayer("gru", 3, 4, backend="cuda")
    assert isinstance(e.value, RuntimeError)
    assert "\n" not in str(e.value)
    # The CPU backend is unaffected, and a CPU layer refuses to move with the same error.
    layer = gruablate.RecurrentLayer("gru", 3, 4)
    with pytest.raises(CudaUnavailableError):
        layer.to("cuda")


_NO_NUMBA_CUDA = """
import sys
sys.modules["numba.cuda"] = None  # as if numba-cuda were not installed
import numpy as np
import gruablate
from gruablate.backends.cuda.device import cuda_available
from gruablate.errors import CudaUnavailableError
assert not cuda_available()
layer = gruablate.RecurrentLayer("lstm", 3, 4)
y, _ = layer.forward(np.zeros((2, 1, 3), dtype="float32"))
assert y.shape == (2, 1, 4)
try:
    gruablate.RecurrentLayer("lstm", 3, 4, backend="cuda")
except CudaUnavailableError as exc:
    print(exc)
else:
    raise SystemExit("no error")
"""


def test_clear_error_without_numba_cuda():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NUMBA_CUDA], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = proc.stdout.strip()
    assert message.startswith("backend='cuda' needs the numba-cuda package"), message
    assert "pip install 'gruablate[cuda]'" in message


# --------------------------------------------------------------------- 4. real GPU
gpu_only = pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU here")


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", BUILTINS + sorted(USER_SPECS) + sorted(EQUATION_SPECS))
def test_gpu_matches_cpu(name, dtype):
    # Sizes off the tile multiples, several tiles per step, and (H = 300, B = 37) more
    # tiles than one block runs, so the grid-stride loops and grid syncs all work; the
    # one-, two- and four-row tiles of small batches.
    bad = compare_with_cpu(name, dtype, T=7, B=5, I=6, H=40)
    bad += compare_with_cpu(name, dtype, T=5, B=37, I=33, H=300, seed=3)
    for B in (1, 2, 3):
        bad += compare_with_cpu(name, dtype, T=6, B=B, I=5, H=70, seed=B)
    assert not bad, "\n".join(bad)


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "big, splits", [(False, 1), (True, 1), (False, 3)], ids=["matmul", "matmul_big", "split_k"]
)
def test_gpu_matmul_matches_numpy(dtype, big, splits):
    """Both product kernels, forced, and a product split along k, on sizes off their
    tile multiples, in the three flavours the layer uses (A B^T, A^T B, A B by strides)."""
    from numba import cuda

    from gruablate.backends.cuda.device import geometry
    from gruablate.backends.cuda.kernels import common_kernels, launch_matmul

    geo = geometry()
    m = common_kernels(dtype, geo)
    rng = np.random.default_rng(0)
    M, N, K = 300, 260, 70
    A, Bm = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    tol = TOL[dtype] * K
    for name, a, sam, sak, b, sbk, sbn in (
        ("A B^T", A, K, 1, Bm.T.copy(), 1, K),  # b holds B^T (N, K)
        ("A^T B", A.T.copy(), 1, M, Bm, N, 1),  # a holds A^T (K, M)
        ("A B", A, K, 1, Bm, N, 1),
    ):
        out = cuda.to_device(np.full(M * N + 5, 7.0, dtype=dtype))
        launch_matmul(m, geo, M, N, K, cuda.to_device(a.astype(dtype).ravel()), 0, sam, sak,
                      cuda.to_device(b.astype(dtype).ravel()), 0, sbk, sbn, out, 5, N, big=big,
                      work=lambda n: cuda.device_array(n, dtype=dtype), splits=splits)
        got = out.copy_to_host()
        assert np.all(got[:5] == 7.0), name  # nothing written before c_off
        np.testing.assert_allclose(got[5:].reshape(M, N), A @ Bm, atol=tol, err_msg=name)


@gpu_only
def test_gpu_buffers_and_parameter_uploads():
    """Cached device buffers follow changes of T and B; host parameter edits reach the
    GPU through params_changed() and reset_parameters()."""
    layer = gruablate.RecurrentLayer("gru", 4, 8, dtype="float64", backend="cuda")
    cpu = layer.to("cpu")
    rng = np.random.default_rng(0)

    def same() -> None:
        x = rng.standard_normal((3, 2, 4))
        np.testing.assert_allclose(layer.forward(x)[0], cpu.forward(x)[0], atol=1e-12)

    for T, B in ((3, 2), (6, 5), (3, 2)):
        x = rng.standard_normal((T, B, 4))
        np.testing.assert_allclose(layer.forward(x)[0], cpu.forward(x)[0], atol=1e-12)
    for target in (layer, cpu):
        target.params["U_c"][:] = 0.05
    layer.params_changed()
    same()
    layer.reset_parameters(seed=4)
    cpu.reset_parameters(seed=4)
    same()


# -------------------------------------------------------- subprocess entry point
def _main(argv: list[str]) -> int:
    """``[--gpu-geometry | --zoneout] --compare NAME ...``: compare each variant with the
    CPU backend and print the result as one JSON line."""
    gpu_geometry = argv[:1] == ["--gpu-geometry"]
    zoneout = argv[:1] == ["--zoneout"]
    if gpu_geometry or zoneout:
        argv = argv[1:]
    if not argv or argv[0] != "--compare":
        print("usage: test_cuda.py [--gpu-geometry | --zoneout] --compare NAME [NAME ...]",
              file=sys.stderr)
        return 2
    # The simulator runs each CUDA thread as a Python thread and its block manager
    # polls them; with the default 5 ms GIL switch interval every __syncthreads costs
    # several switch intervals. A short interval makes the runs about 8x faster.
    sys.setswitchinterval(5e-5)
    from _cudasim import lock_simulator_shared_arrays  # tests/ is sys.path[0] here

    lock_simulator_shared_arrays()
    ran, bad = [], []
    if gpu_geometry:
        # The simulator normally gets small tiles (see cuda.geometry); here the
        # GPU's, at sizes that still span several of them.
        from gruablate.backends.cuda import layer as cuda_layer
        from gruablate.backends.cuda.source import DEFAULT_GEOMETRY

        cuda_layer.geometry = lambda: DEFAULT_GEOMETRY
        for name in argv[1:]:
            bad += compare_with_cpu(name, "float64", T=2, B=9, I=3, H=70)
            ran.append(f"{name} float64")
    elif zoneout:
        for name in argv[1:]:
            for dtype in TOL:
                bad += compare_with_cpu(name, dtype, T=3, B=3, I=3, H=5, lengths=[3, 1, 0],
                                        zoneout=True)
                ran.append(f"{name} {dtype}")
    else:
        for name in argv[1:]:
            for dtype in _sim_dtypes(name):
                # Rows of every kind of length: the whole sequence, one step, none.
                bad += compare_with_cpu(name, dtype, T=3, B=3, I=3, H=5, lengths=[3, 1, 0])
                # Batch 1: one-row tiles, fewer rows than warps (Geometry.for_batch).
                bad += compare_with_cpu(name, dtype, T=2, B=1, I=2, H=3, seed=1)
                ran.append(f"{name} {dtype}")
    print(json.dumps({"ran": ran, "bad": bad}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
