"""One layer on the GPU: the CUDA backend's :class:`~gruablate.backends.base.LayerImpl`.

Keeps the packed parameters (and a transposed copy of ``U`` for coalesced loads in the
forward product), the packed gradients and the work buffers in device memory. The
host entry points (``forward``, ``backward``) take and give host arrays, as the layer's
API does; the device entry points (``forward_device``, ``backward_device``) take and
give device arrays, for the device model runner and the benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...cells.plan import KernelPlan
from ...errors import CudaUnavailableError
from .buffers import DeviceBuffers
from .device import geometry, require_cuda, simulator_enabled
from .kernels import blocks, common_kernels, kernels, launch_matmul
from .source import Geometry, signatures


class CudaLayer:
    """A layer of ``plan`` on the GPU, whose host flat buffers are ``params``/``grads``."""

    def __init__(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
                 params: np.ndarray, grads: np.ndarray) -> None:
        self.cuda = require_cuda()
        self.plan, self.dtype = plan, dtype
        self.input_size, self.hidden = input_size, hidden
        self.host_params, self.host_grads = params, grads
        self.geo = geometry()
        self.sim = simulator_enabled()
        self.dt = np.dtype(dtype)
        self.m = common_kernels(dtype, self.geo)
        self._sigs = self._signatures(dtype)
        self._coop: dict[tuple[str, Geometry], int] = {}
        self.buffers = DeviceBuffers(self.cuda, self.dt)
        p = plan
        self.n_w, self.n_u, self.n_b = p.param_sizes(input_size, hidden)
        n = self.n_w + self.n_u + self.n_b
        #: packed parameters and gradients on the device, laid out like the host's
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
        self.d_params.copy_to_device(self.host_params)
        self.device_params_changed()

    def device_params_changed(self) -> None:
        """Refresh what derives from :attr:`d_params` after it changed on the device."""
        if self.n_u:
            H = self.hidden
            R, C = self.n_u // H, H  # every U block, stacked
            ew = self.geo.ew_threads
            self.m.transpose[blocks(R * C, ew), ew](R, C, self.d_params, self.n_w, self.d_UT)

    # ------------------------------------------------------------- the kernels
    @property
    def recurrent(self) -> bool:
        """Whether the kernels are persistent (a recurrent product), not a scan."""
        return self.plan.nh > 0

    def _module(self, geo: Geometry) -> Any:
        """The generated module of the layer's variant for launch geometry ``geo``."""
        return kernels(self.plan.variant, self.dtype, geo)

    @staticmethod
    def _signatures(dtype: str) -> dict[str, tuple]:
        return signatures(dtype)

    # ---------------------------------------------------------------- launches
    def _matmul(self, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn, c, c_off, ldc) -> None:
        """``C = A B`` with strided operands (see :func:`launch_matmul`)."""
        launch_matmul(self.m, self.geo, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn,
                      c, c_off, ldc, work=lambda n: self.buffers.scratch("split_k", n))

    def _launch_cell(self, name: str, B: int, args: tuple) -> None:
        """Launch a cell kernel: cooperative and persistent if the variant recurs, with
        tiles of as few batch rows as ``B`` needs (:meth:`Geometry.for_batch`)."""
        H = self.hidden
        geo = self.geo.for_batch(B)
        kern = getattr(self._module(geo), name)
        if not self.recurrent:
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
        BH = B * self.hidden
        up = self.buffers.upload
        saved = self.forward_device(up("x", x), up("s0", s0), T, B, keep)
        y = saved[1][BH : (T + 1) * BH].copy_to_host().reshape(x.shape[:2] + (-1,))
        last = self.buffers.get("last_state", s0.size)
        self.copy_last_state(saved, T, B, keep, last)
        sT = last.copy_to_host().reshape(s0.shape)
        return y, sT, (saved if keep else ())

    def copy_last_state(self, saved: tuple, T: int, B: int, keep: bool, dst: Any) -> None:
        """The last state after :meth:`forward_device` into ``dst``, flat (S, B, H)."""
        hs, cs = saved[1], saved[2]
        BH = B * self.hidden
        dst[:BH].copy_to_device(hs[T * BH : (T + 1) * BH])
        if self.plan.n_states == 2:
            dst[BH:].copy_to_device(cs[T * BH : (T + 1) * BH] if keep else cs[:BH])

    def forward_device(self, xd: Any, s0d: Any, T: int, B: int, keep: bool) -> tuple:
        """The forward pass on device arrays: ``xd`` the flat (T, B, I) input, ``s0d`` the
        flat (S, B, H) initial state. Returns ``(xd, hs, cs, acts, aux)``, device arrays
        with ``hs[B*H:]`` the flat output ``y`` (T, B, H) and ``hs[T*B*H:]`` the last
        ``h``; the LSTM's last ``c`` is ``cs[T*B*H:]`` (``cs[:B*H]`` when not ``keep``).
        They are cached buffers, overwritten by the next call."""
        p = self.plan
        I, H = self.input_size, self.hidden
        BH = B * H
        lstm = p.has_cell_state
        xp = self.buffers.get("xp", T * B * p.nx * H)
        # Input projections of all steps at once: (T*B, I) x (I, NX*H), W read transposed.
        self._matmul(T * B, p.nx * H, I, xd, 0, I, 1, self.d_params, 0, 1, I, xp, 0, p.nx * H)
        hs = self.buffers.get("hs", (T + 1) * BH)  # hs[0] = h0, hs[t + 1] = y_t
        hs[:BH].copy_to_device(s0d[:BH])
        if keep:
            cs = self.buffers.get("cs", (T + 1) * BH if lstm else 1)
            acts = self.buffers.get("acts", T * B * p.na * H)
            aux = self.buffers.get("aux", T * BH if (p.uses_aux and not lstm) else 1)
        else:  # one step's worth: inference keeps no history
            cs = self.buffers.get("cs_inf", BH if lstm else 1)
            acts = self.buffers.get("acts_inf", B * p.na * H)
            aux = self.buffers.get("aux_inf", BH if (p.uses_aux and not lstm) else 1)
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
            saved[3:], self.buffers.upload("dy", dy), self.buffers.upload("dsT", dsT), T, B
        )
        self.d_grads.copy_to_host(self.host_grads)
        return (
            dx.copy_to_host().reshape(T, B, -1),
            ds0.copy_to_host().reshape(dsT.shape),
        )

    def backward_device(self, saved: tuple, dyd: Any, dsTd: Any, T: int, B: int) -> tuple:
        """Backward on device arrays after :meth:`forward_device` with ``keep``: ``dyd``
        flat (T, B, H), ``dsTd`` flat (S, B, H). Returns device ``(dx, ds0)`` and leaves
        the packed weight gradients in :attr:`d_grads`."""
        p = self.plan
        xd, hs, cs, acts, aux = saved
        I, H = self.input_size, self.hidden
        BH, TB = B * H, T * B
        lstm = p.has_cell_state
        nxh, nhmh = p.nx * H, p.nhm * H
        before = p.reset_before
        dgx = self.buffers.get("dgx", TB * nxh)
        dgh = self.buffers.get("dgh", TB * nhmh)
        dgc = self.buffers.get("dgc", TB * H if before else 1)
        dgb = self.buffers.get("dgb", TB * p.nb * H)
        # The kernel updates dhd and dc in place: copies, not the caller's dsT.
        dhd = self.buffers.get("dhd", BH)
        dhd.copy_to_device(dsTd[:BH])
        dc = self.buffers.get("dc", BH if lstm else 1)
        if lstm:
            dc.copy_to_device(dsTd[BH:])
        gp = self.buffers.get("gp", BH if p.carries_gate_part else 1)
        ds0 = self.buffers.get("ds0", p.n_states * BH)
        self._launch_cell(
            "backward",
            B,
            (T, B, H, self.d_U, hs, cs, acts, aux, dyd, dgx, dgh, dgc, dgb, dhd, dc, gp, ds0),
        )
        # Input and weight gradients: one product each over all steps.
        dx = self.buffers.get("dx", TB * I)
        self._matmul(TB, I, nxh, dgx, 0, nxh, 1, self.d_params, 0, I, 1, dx, 0, I)
        g = self.d_grads
        self._matmul(nxh, I, TB, dgx, 0, 1, nxh, xd, 0, I, 1, g, 0, I)
        if nhmh:  # dU_main = dgh^T [h_0 .. h_{T-1}]
            self._matmul(nhmh, H, TB, dgh, 0, 1, nhmh, hs, 0, H, 1, g, self.n_w, H)
        if before and p.candidate_sees_h:  # dU_c = dgc^T (r * h)
            self._matmul(H, H, TB, dgc, 0, 1, H, aux, 0, H, 1, g, self.n_w + nhmh * H, H)
        nbh = p.nb * H
        self.m.colsum[blocks(nbh, self.geo.jt), self.geo.threads](
            TB, nbh, dgb, 0, nbh, g, self.n_w + self.n_u
        )
        return dx, ds0
