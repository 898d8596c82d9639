"""The CUDA backend: ``numba.cuda`` kernels for every variant, forward and backward.

The kernel text comes from :mod:`gruablate.kernels.cuda_source` (the element-wise cell
code of :mod:`cellgen` pasted into CUDA loop templates, like the CPU backend) and is
loaded as a disk-cached module. The shape of the computation is that of the fast RNN
libraries (cuDNN, haste):

- forward: one tiled product ``x W^T`` for the input projections of all steps, then
  one *persistent* cooperative kernel that loops over time; per step every block
  computes tiles of the recurrent product and runs the fused gate code on them, and a
  grid-wide sync separates the steps (no launch per step);
- backward: one persistent kernel walks time backwards, storing the pre-activation
  gradients of every step; after it, one product each for ``dx``, ``dW`` and ``dU``
  and a column sum for ``db`` (no float atomics anywhere);
- a variant without recurrent weights (minGRU: linear in ``h``) runs as a scan over
  time, one thread per (batch row, hidden unit), with no synchronisation at all.

Parameters, activations and gradients stay in device arrays cached on the
:class:`CudaImpl`; the layer's host parameters are uploaded by :meth:`CudaImpl.params_changed`.

``numba-cuda`` is optional: this module imports it only when a CUDA layer is built,
and a missing package or GPU gives one clear :class:`CudaUnavailableError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..spec import Variant
from .cuda_source import (
    CELL_KERNELS,
    COMMON_KERNELS,
    DEFAULT_GEOMETRY,
    SIM_GEOMETRY,
    Geometry,
    cell_source,
    common_source,
    signatures,
)
from .source import load_module

if TYPE_CHECKING:  # pragma: no cover
    from ..layer import RecurrentLayer

__all__ = [
    "CudaImpl",
    "CudaUnavailableError",
    "compile_ptx",
    "cuda_available",
    "geometry",
    "kernels",
]


class CudaUnavailableError(ValueError, RuntimeError):
    """``backend="cuda"`` was asked for, but numba-cuda or a CUDA GPU is missing.

    A ``ValueError``: like any option the machine cannot honour, it is refused before
    work (``run train`` prints it as a usage error)."""


def _numba_cuda() -> Any:
    """``numba.cuda``, or a one-line error saying what to install."""
    try:
        from numba import cuda
    except ImportError as exc:  # numba-cuda is an optional dependency
        raise CudaUnavailableError(
            "backend='cuda' needs the numba-cuda package, which is not installed"
            f" ({exc}); install it with: pip install 'gruablate[cuda]'"
        ) from None
    return cuda


def simulator_enabled() -> bool:
    """True when numba runs CUDA kernels in its Python simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    _numba_cuda()
    try:  # what numba.cuda itself read when it was imported
        from numba.cuda.core import config
    except ImportError:  # pragma: no cover - other numba-cuda layouts
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    return bool(config.ENABLE_CUDASIM)


def cuda_available() -> bool:
    """Whether a CUDA layer can run here (numba-cuda and a GPU, or the simulator)."""
    try:
        return bool(_numba_cuda().is_available())
    except CudaUnavailableError:
        return False


def require_cuda() -> Any:
    """``numba.cuda`` if a GPU (or the simulator) is usable, else :class:`CudaUnavailableError`."""
    cuda = _numba_cuda()
    try:
        ok = cuda.is_available()
    except Exception as exc:  # a broken driver install raises instead of answering False
        raise CudaUnavailableError(
            f"backend='cuda' needs a working CUDA driver and GPU: {exc}"
        ) from None
    if not ok:
        raise CudaUnavailableError(
            "backend='cuda' needs an NVIDIA GPU with a working driver, and numba.cuda"
            " found none on this machine; use backend='cpu' (or set NUMBA_ENABLE_CUDASIM=1"
            " to run the kernels in numba's slow simulator)"
        )
    return cuda


def geometry() -> Geometry:
    """The launch geometry used here: small tiles under the simulator, else the GPU default."""
    return SIM_GEOMETRY if simulator_enabled() else DEFAULT_GEOMETRY


@cache
def kernels(variant: Variant, dtype: str, geo: Geometry | None = None) -> ModuleType:
    """The generated kernel module of a variant (``forward``, ``backward``); the kernels
    compile lazily on first launch and are cached on disk."""
    _numba_cuda()
    geo = geo or geometry()
    return load_module(f"cuda_{dtype}", cell_source(variant, dtype, geo))


@cache
def common_kernels(dtype: str, geo: Geometry | None = None) -> ModuleType:
    """The variant-independent kernels (:data:`~.cuda_source.COMMON_KERNELS`)."""
    _numba_cuda()
    geo = geo or geometry()
    return load_module(f"cudacommon_{dtype}", common_source(dtype, geo))


def compile_ptx(
    variant: Variant | None,
    dtype: str,
    cc: tuple[int, int] = (9, 0),
    geo: Geometry | None = None,
) -> dict[str, str]:
    """PTX of the kernels of ``variant`` (``forward``, ``backward``), or with ``None`` of
    the variant-independent ones (``COMMON_KERNELS``: the products, ``ksum``, ``colsum``,
    ``transpose``), compiled by
    NVVM for compute capability ``cc``.

    Needs numba-cuda's compiler libraries but no GPU. Raises whatever the compiler
    raises, so a kernel that only the simulator accepts fails here.
    """
    cuda = _numba_cuda()
    geo = geo or DEFAULT_GEOMETRY
    sigs = signatures(dtype)
    if variant is None:
        mod, names = common_kernels(dtype, geo), COMMON_KERNELS
    else:
        mod, names = kernels(variant, dtype, geo), CELL_KERNELS
    return module_ptx(cuda, mod, names, sigs, cc)


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


# ----------------------------------------------------------------------- layer
class CudaImpl:
    """Runs a :class:`~gruablate.layer.RecurrentLayer` on the GPU.

    Keeps the packed parameters (and a transposed copy of ``U`` for coalesced loads in
    the forward product), the packed gradients and the work buffers in device memory.
    ``forward`` and ``backward`` take and return host arrays, as the layer's API does;
    the activations they pass between them stay on the device.
    """

    def __init__(self, layer: RecurrentLayer) -> None:
        self.cuda = require_cuda()
        self.layer = layer
        self.plan = layer.plan
        self.geo = geometry()
        self.sim = simulator_enabled()
        self.dt = np.dtype(layer.dtype)
        self.m = common_kernels(layer.dtype, self.geo)
        self._sigs = signatures(layer.dtype)
        self._coop: dict[tuple[str, Geometry], int] = {}
        self._buf: dict[str, Any] = {}
        I, H, p = layer.input_size, layer.hidden_size, self.plan
        self.n_w, self.n_u, self.n_b = p.nx * H * I, p.nh * H * H, p.nb * H
        n = self.n_w + self.n_u + self.n_b
        #: packed parameters and gradients on the device, laid out like ``flat_params``
        self.d_params = self.cuda.device_array(n, dtype=self.dt)
        self.d_grads = self.cuda.device_array(n, dtype=self.dt)
        self._dummy = self.cuda.device_array(1, dtype=self.dt)
        self.d_U = self.d_params[self.n_w : self.n_w + self.n_u] if self.n_u else self._dummy
        self.d_b = self.d_params[self.n_w + self.n_u :]
        self.d_UT = self.cuda.device_array(max(self.n_u, 1), dtype=self.dt)
        self.params_changed()

    # ------------------------------------------------------------- parameters
    def params_changed(self) -> None:
        """Upload the layer's host parameters (call after changing them on the host)."""
        self.d_params.copy_to_device(self.layer.flat_params)
        self.device_params_changed()

    def device_params_changed(self) -> None:
        """Refresh what derives from :attr:`d_params` after it changed on the device."""
        if self.n_u:
            H = self.layer.hidden_size
            R, C = self.plan.nh * H, H
            ew = self.geo.ew_threads
            self.m.transpose[blocks(R * C, ew), ew](R, C, self.d_params, self.n_w, self.d_UT)

    # ---------------------------------------------------------------- buffers
    def _get(self, name: str, size: int) -> Any:
        """A cached flat device buffer of ``size`` elements (reallocated on a size change)."""
        size = max(int(size), 1)
        buf = self._buf.get(name)
        if buf is None or buf.size != size:
            buf = self.cuda.device_array(size, dtype=self.dt)
            self._buf[name] = buf
        return buf

    def _scratch(self, name: str, size: int) -> Any:
        """A cached flat device buffer of at least ``size`` elements (it only grows, so
        products of different sizes sharing it do not reallocate it in turn)."""
        buf = self._buf.get(name)
        if buf is None or buf.size < size:
            buf = self.cuda.device_array(max(int(size), 1), dtype=self.dt)
            self._buf[name] = buf
        return buf

    def _upload(self, name: str, host: np.ndarray) -> Any:
        buf = self._get(name, host.size)
        buf.copy_to_device(np.ascontiguousarray(host).reshape(-1))
        return buf

    # ---------------------------------------------------------------- launches
    def _matmul(self, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn, c, c_off, ldc) -> None:
        """``C = A B`` with strided operands (see :func:`launch_matmul`)."""
        launch_matmul(self.m, self.geo, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn,
                      c, c_off, ldc, work=lambda n: self._scratch("split_k", n))

    def _launch_cell(self, name: str, B: int, args: tuple) -> None:
        """Launch a cell kernel: cooperative and persistent if the variant recurs, with
        tiles of as few batch rows as ``B`` needs (:meth:`Geometry.for_batch`)."""
        H = self.layer.hidden_size
        geo = self.geo.for_batch(B)
        kern = getattr(kernels(self.layer.variant, self.layer.dtype, geo), name)
        if self.plan.nh == 0:
            ew = geo.ew_threads
            kern[blocks(B * H, ew), ew](*args)
            return
        nt = geo.threads
        tiles = blocks(B, geo.bm) * blocks(H, geo.tile_cols)
        kern[min(tiles, self._coop_blocks(name, geo, kern, nt)), nt](*args)

    def _coop_blocks(self, name: str, geo: Geometry, kern: Any, nt: int) -> int:
        """Most blocks that can be co-resident (a grid sync deadlocks beyond that)."""
        key = (name, geo)
        if key not in self._coop:
            if self.sim:
                # The simulator runs blocks one after another, so a grid sync works
                # only with a single block.
                self._coop[key] = 1
            else:
                overload = kern.compile(self._sigs[name])
                blocks = int(overload.max_cooperative_grid_blocks(nt))
                if blocks < 1:
                    raise CudaUnavailableError(
                        "backend='cuda' needs cooperative kernel launches (grid-wide"
                        " sync), which this GPU or driver does not offer"
                    )
                self._coop[key] = blocks
        return self._coop[key]

    # ---------------------------------------------------------------- forward
    def forward(self, x: np.ndarray, s0: np.ndarray, keep: bool):
        """Run over the sequence: ``(y, sT, saved)`` with ``saved`` the device arrays
        :meth:`backward` needs (empty when ``keep`` is False)."""
        T, B, _ = x.shape
        BH = B * self.layer.hidden_size
        saved = self.forward_device(self._upload("x", x), self._upload("s0", s0), T, B, keep)
        xd, hs, cs, acts, aux = saved
        y = hs[BH:].copy_to_host().reshape(x.shape[:2] + (-1,))
        sT = np.empty_like(s0)
        sT[0] = y[T - 1]
        if s0.shape[0] == 2:
            sT[1] = (cs[T * BH :] if keep else cs[:BH]).copy_to_host().reshape(B, -1)
        return y, sT, (saved if keep else ())

    def forward_device(self, xd: Any, s0d: Any, T: int, B: int, keep: bool) -> tuple:
        """The forward pass on device arrays: ``xd`` the flat (T, B, I) input, ``s0d`` the
        flat (S, B, H) initial state. Returns ``(xd, hs, cs, acts, aux)``, device arrays
        with ``hs[B*H:]`` the flat output ``y`` (T, B, H) and ``hs[T*B*H:]`` the last
        ``h``; the LSTM's last ``c`` is ``cs[T*B*H:]`` (``cs[:B*H]`` when not ``keep``).
        They are cached buffers, overwritten by the next call."""
        L, p = self.layer, self.plan
        I, H = L.input_size, L.hidden_size
        BH = B * H
        lstm = L.variant.family == "lstm"
        xp = self._get("xp", T * B * p.nx * H)
        # Input projections of all steps at once: (T*B, I) x (I, NX*H), W read transposed.
        self._matmul(T * B, p.nx * H, I, xd, 0, I, 1, self.d_params, 0, 1, I, xp, 0, p.nx * H)
        hs = self._get("hs", (T + 1) * BH)  # hs[0] = h0, hs[t + 1] = y_t
        hs[:BH].copy_to_device(s0d[:BH])
        if keep:
            cs = self._get("cs", (T + 1) * BH if lstm else 1)
            acts = self._get("acts", T * B * p.na * H)
            aux = self._get("aux", T * BH if (p.uses_aux and not lstm) else 1)
        else:  # one step's worth: inference keeps no history
            cs = self._get("cs_inf", BH if lstm else 1)
            acts = self._get("acts_inf", B * p.na * H)
            aux = self._get("aux_inf", BH if (p.uses_aux and not lstm) else 1)
        if lstm:
            cs[:BH].copy_to_device(s0d[BH:])
        self._launch_cell(
            "forward", B, (T, B, H, int(keep), xp, self.d_b, self.d_UT, hs, cs, acts, aux)
        )
        return xd, hs, cs, acts, aux

    # --------------------------------------------------------------- backward
    def backward(self, saved: tuple, dy: np.ndarray, dsT: np.ndarray):
        """Gradients given ``dy`` and ``dsT``: returns ``(dx, ds0)`` and writes the packed
        weight gradients into the layer's ``flat_grads``."""
        T, B, _ = dy.shape
        dx, ds0 = self.backward_device(
            saved[3:], self._upload("dy", dy), self._upload("dsT", dsT), T, B
        )
        self.d_grads.copy_to_host(self.layer.flat_grads)
        return (
            dx.copy_to_host().reshape(T, B, -1),
            ds0.copy_to_host().reshape(dsT.shape),
        )

    def backward_device(self, saved: tuple, dyd: Any, dsTd: Any, T: int, B: int) -> tuple:
        """Backward on device arrays after :meth:`forward_device` with ``keep``: ``dyd``
        flat (T, B, H), ``dsTd`` flat (S, B, H). Returns device ``(dx, ds0)`` and leaves
        the packed weight gradients in :attr:`d_grads`."""
        L, p = self.layer, self.plan
        xd, hs, cs, acts, aux = saved
        I, H = L.input_size, L.hidden_size
        BH, TB = B * H, T * B
        lstm = L.variant.family == "lstm"
        nxh, nhmh = p.nx * H, p.nhm * H
        before = p.reset_before
        dgx = self._get("dgx", TB * nxh)
        dgh = self._get("dgh", TB * nhmh)
        dgc = self._get("dgc", TB * H if before else 1)
        dgb = self._get("dgb", TB * p.nb * H)
        # The kernel updates dhd and dc in place: copies, not the caller's dsT.
        dhd = self._get("dhd", BH)
        dhd.copy_to_device(dsTd[:BH])
        dc = self._get("dc", BH if lstm else 1)
        if lstm:
            dc.copy_to_device(dsTd[BH:])
        gp = self._get("gp", BH if L.variant.reset == "tied" else 1)
        ds0 = self._get("ds0", p.n_states * BH)
        self._launch_cell(
            "backward",
            B,
            (T, B, H, self.d_U, hs, cs, acts, aux, dyd, dgx, dgh, dgc, dgb, dhd, dc, gp, ds0),
        )
        # Input and weight gradients: one product each over all steps.
        dx = self._get("dx", TB * I)
        self._matmul(TB, I, nxh, dgx, 0, nxh, 1, self.d_params, 0, I, 1, dx, 0, I)
        g = self.d_grads
        self._matmul(nxh, I, TB, dgx, 0, 1, nxh, xd, 0, I, 1, g, 0, I)
        if nhmh:  # dU_main = dgh^T [h_0 .. h_{T-1}]
            self._matmul(nhmh, H, TB, dgh, 0, 1, nhmh, hs, 0, H, 1, g, self.n_w, H)
        if before and L.variant.candidate.sees_h:  # dU_c = dgc^T (r * h)
            self._matmul(H, H, TB, dgc, 0, 1, H, aux, 0, H, 1, g, self.n_w + nhmh * H, H)
        nbh = p.nb * H
        self.m.colsum[blocks(nbh, self.geo.jt), self.geo.threads](
            TB, nbh, dgb, g, self.n_w + self.n_u
        )
        return dx, ds0


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
