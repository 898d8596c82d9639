"""The CUDA backend: ``numba.cuda`` kernels for every variant, forward and backward.

The kernel text comes from :mod:`.cell_source` (each cell's kernels, printed from its
graph like the CPU backend's) and :mod:`.source` (the products and other kernels all
cells share) and is loaded as a disk-cached module. The shape of the computation is
that of the fast RNN libraries (cuDNN, haste):

- forward: one tiled product ``x W^T`` for the input projections of all steps, then
  one *persistent* cooperative kernel that loops over time; per step and pass every
  block computes its tiles of that pass's recurrent products and runs the pass's
  element-wise statements on them, and a grid-wide sync separates the passes (no
  launch per step);
- backward: one persistent kernel walks time backwards, storing the pre-activation
  gradients of every step; after it, one product each for ``dx``, ``dW`` and every
  ``dU`` group, and a column sum per vector parameter (no float atomics anywhere);
- a cell without recurrent weights (minGRU: linear in ``h``) runs as a scan over
  time, one thread per (batch row, hidden unit), with no synchronisation at all.

This module loads the generated modules and launches the shared products;
:mod:`.layer` runs a layer on them, :mod:`.model` and :mod:`.optim` a whole training
step, and :mod:`.device` says whether CUDA is usable here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import Any

from ...cells.spec import Variant
from ..source import load_module
from .cell_source import CELL_KERNELS, cell_signatures, cell_source
from .device import geometry, numba_cuda
from .source import COMMON_KERNELS, DEFAULT_GEOMETRY, Geometry, common_source, signatures

__all__ = ["blocks", "common_kernels", "compile_ptx", "kernels", "launch_matmul",
           "module_ptx"]


@cache
def kernels(variant: Variant, dtype: str, geo: Geometry | None = None,
            zoneout: bool = False) -> ModuleType:
    """The kernel module printed from a variant's cell (``forward``, ``backward``); the
    kernels compile lazily on first launch and are cached on disk."""
    numba_cuda()
    geo = geo or geometry()
    return load_module(f"cudacell_{dtype}", cell_source(variant, dtype, geo, zoneout))


@cache
def common_kernels(dtype: str, geo: Geometry | None = None) -> ModuleType:
    """The variant-independent kernels (:data:`~.source.COMMON_KERNELS`)."""
    numba_cuda()
    geo = geo or geometry()
    return load_module(f"cudacommon_{dtype}", common_source(dtype, geo))


def compile_ptx(
    variant: Variant | None,
    dtype: str,
    cc: tuple[int, int] = (9, 0),
    geo: Geometry | None = None,
    zoneout: bool = False,
) -> dict[str, str]:
    """PTX of the kernels of ``variant`` (``forward``, ``backward``; of its cell with
    zoneout on ``h`` if asked), or with ``None`` of the variant-independent ones
    (``COMMON_KERNELS``: the products, ``ksum``, ``colsum``, ``transpose``), compiled by
    NVVM for compute capability ``cc``.

    Needs numba-cuda's compiler libraries but no GPU. Raises whatever the compiler
    raises, so a kernel that only the simulator accepts fails here.
    """
    cuda = numba_cuda()
    geo = geo or DEFAULT_GEOMETRY
    if variant is None:
        return module_ptx(cuda, common_kernels(dtype, geo), COMMON_KERNELS,
                          signatures(dtype), cc)
    return module_ptx(cuda, kernels(variant, dtype, geo, zoneout), CELL_KERNELS,
                      cell_signatures(dtype), cc)


def module_ptx(
    cuda: Any, mod: ModuleType, names: Iterable[str], sigs: dict, cc: tuple[int, int]
) -> dict[str, str]:
    """PTX of kernels ``names`` of a generated module, compiled for ``cc`` (no GPU needed)."""
    out: dict[str, str] = {}
    bounds = getattr(mod, "BOUNDS", {})  # the launch bounds the module's kernels carry
    with _target_cc_without_gpu(cuda, cc):
        for name in names:
            ptx, _ = cuda.compile_ptx(getattr(mod, name).py_func, sigs[name], cc=cc, **bounds)
            out[name] = ptx
    return out


@contextmanager
def _target_cc_without_gpu(cuda: Any, cc: tuple[int, int]) -> Iterator[None]:
    """Let ``compile_ptx`` compile grid-synchronising kernels on a machine without a GPU.

    numba-cuda (0.30) implements ``cuda.cg.this_grid()`` and ``GridGroup.sync()`` as
    overloads, and compiles an overload's body as a device function for the compute
    capability of the *current device*, asking the driver for it even inside
    ``compile_ptx(cc=...)``; without a driver that raises. When there is no GPU we
    answer that question with the ``cc`` being compiled for; with a GPU nothing is
    changed.
    """
    if cuda.is_available():
        yield
        return
    from numba.cuda import dispatcher

    class _Target:
        compute_capability = cc

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = _Target
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def blocks(n: int, per: int) -> int:
    """Blocks of ``per`` threads that cover ``n`` items (at least one)."""
    return max(1, -(-int(n) // int(per)))


def launch_matmul(m: ModuleType, geo: Geometry, M, N, K, a, a_off, sam, sak, b, b_off,
                  sbk, sbn, c, c_off, ldc, big: bool | None = None,
                  work: Callable[[int], Any] | None = None, splits: int | None = None) -> None:
    """``C = A B`` with strided operands by a tiled product kernel of ``m``
    (:func:`common_kernels`), one thread block per tile of C: ``matmul_big``
    (``mm_big``² tiles) when that still makes ``mm_big_min`` blocks, else ``matmul``
    (``mm_tile``²).

    A product with fewer tiles than ``mm_big_min`` and a long reduction (the weight
    gradients: small outputs, k over all T·B rows) is split along k when ``work``
    gives scratch space (``work(n)``: a device array of at least ``n`` elements):
    each slice goes to its own part of it and ``ksum`` adds them in a fixed order.
    ``big`` and ``splits`` force the choices (the tests use them)."""
    if big is None:
        big = blocks(N, geo.mm_big) * blocks(M, geo.mm_big) >= geo.mm_big_min
    tile, kern = (geo.mm_big, m.matmul_big) if big else (geo.mm_tile, m.matmul)
    grid = (blocks(N, tile), blocks(M, tile))
    if splits is None:
        splits = 1
        if work is not None and grid[0] * grid[1] < geo.mm_big_min:
            want = blocks(2 * geo.mm_big_min, grid[0] * grid[1])
            splits = max(1, min(want, K // geo.mm_split_k))
    if splits <= 1:
        kern[(*grid, 1), (geo.mm_side, geo.mm_side)](
            M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn, c, c_off, ldc, K, 0
        )
        return
    if work is None:
        raise ValueError("a split-K product needs work space")
    kc = blocks(K, splits)
    splits = blocks(K, kc)  # no empty slice
    part = work(splits * M * N)
    kern[(*grid, splits), (geo.mm_side, geo.mm_side)](
        M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn, part, 0, N, kc, M * N
    )
    ew = geo.ew_threads
    m.ksum[blocks(M * N, ew), ew](splits, M, N, part, c, c_off, ldc)
