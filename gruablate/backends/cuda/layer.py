"""One layer on the GPU: the CUDA backend's :class:`~gruablate.backends.base.LayerImpl`.

Keeps the packed parameters (and a transposed copy of ``U`` for coalesced loads in the
forward products), the packed gradients and the work buffers in device memory, and runs
the kernels :mod:`.cell_source` prints from the cell's graph: the input products of all
steps before the persistent kernel, and after the backward one product per weight
matrix — ``dx = dgx W`` (plus the element-wise part of a cell that reads ``x`` itself),
``dW = dgx^T x``, per group ``dU = dP^T operand`` — and a column sum per vector
parameter from wherever its gradient terms were left. The host entry points
(``forward``, ``backward``) take and give host arrays, as the layer's API does; the
device entry points (``forward_device``, ``backward_device``) take and give device
arrays, for the device model runner and the benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...cells.plan import KernelPlan
from ...errors import CudaUnavailableError
from ..state import check_zoneout
from .buffers import DeviceBuffers
from .cell_source import CudaCellPrinter, cell_signatures
from .device import geometry, require_cuda, simulator_enabled
from .kernels import blocks, common_kernels, kernels, launch_matmul
from .source import Geometry


class CudaLayer:
    """A layer of ``plan`` on the GPU, whose host flat buffers are ``params``/``grads``."""

    def __init__(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
                 params: np.ndarray, grads: np.ndarray) -> None:
        self.cuda = require_cuda()
        #: what the printed kernels decided (buffers, aliases, where gradients go)
        self.cell = CudaCellPrinter(plan)
        self.plan, self.dtype = plan, dtype
        self.input_size, self.hidden = input_size, hidden
        self.host_params, self.host_grads = params, grads
        self.geo = geometry()
        self.sim = simulator_enabled()
        self.dt = np.dtype(dtype)
        self.m = common_kernels(dtype, self.geo)
        self._sigs = cell_signatures(dtype)
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
        #: one length for every row, past any T: the kernels' lengths when none are given
        self._unbounded = self.cuda.to_device(np.array([2**62], dtype=np.int64))
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
        return not self.plan.ir.is_scan

    def _module(self, geo: Geometry) -> Any:
        """The printed module of the layer's cell for launch geometry ``geo``."""
        return kernels(self.plan.variant, self.dtype, geo, self.plan.zoneout)

    def _zeros(self, name: str, size: int) -> Any:
        buf = self.buffers.get(name, size)
        ew = self.geo.ew_threads
        self.m.zero[blocks(buf.size, ew), ew](buf.size, buf)
        return buf

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
    def forward(self, x: np.ndarray, s0: np.ndarray, keep: bool,
                lengths: np.ndarray | None = None, zoneout: np.ndarray | None = None):
        """Run over the sequence: ``(y, sT, saved)`` with ``saved`` the device arrays
        :meth:`backward` needs (empty when ``keep`` is False)."""
        T, B, _ = x.shape
        BH = B * self.hidden
        up = self.buffers.upload
        check_zoneout(self.plan, zoneout)
        lensd = None if lengths is None else up("lens", lengths)
        zmd = None if zoneout is None else up("zm", zoneout)
        saved = self.forward_device(up("x", x), up("s0", s0), T, B, keep, lensd, zmd)
        y = saved[1][BH : (T + 1) * BH].copy_to_host().reshape(x.shape[:2] + (-1,))
        if lengths is not None:  # the kernels carry h past a row's length: y is 0 there
            y[np.arange(T)[:, None] >= lengths[None, :]] = 0
        last = self.buffers.get("last_state", s0.size)
        self.copy_last_state(saved, T, B, keep, last)
        sT = last.copy_to_host().reshape(s0.shape)
        return y, sT, (saved if keep else ())

    def forward_device(self, xd: Any, s0d: Any, T: int, B: int, keep: bool,
                       lensd: Any = None, zmd: Any = None) -> tuple:
        """The forward pass on device arrays (``xd`` flat (T, B, I), ``s0d`` flat
        (S, B, H), ``lensd`` each row's length, int64, None: all ``T``; ``zmd`` the
        zoneout weights, flat (T, B, H), for a zoneout cell only). Returns
        ``(xd, ss, acts, lensd, zmd)``: ``ss[B*H:(T+1)*B*H]`` is the flat output
        ``y`` and ``ss[T*B*H:(T+1)*B*H]`` the last ``h`` (cached buffers, overwritten by
        the next call)."""
        p = self.plan
        I, H = self.input_size, self.hidden
        BH, S = B * H, p.n_states
        xp = self.buffers.get("xp", T * B * p.nx * H)
        if p.nx:  # the input products of all steps: (T*B, I) x (I, NX*H), W transposed
            self._matmul(T * B, p.nx * H, I, xd, 0, I, 1, self.d_params, 0, 1, I, xp, 0,
                         p.nx * H)
        kept = T + 1 if keep else 2  # steps of the other states kept
        ss = self.buffers.get("ss" if keep else "ss_inf", (T + 1) * BH + (S - 1) * kept * BH)
        ss[:BH].copy_to_device(s0d[:BH])
        for k in range(1, S):  # their step 0
            at = (T + 1) * BH + (k - 1) * kept * BH
            ss[at : at + BH].copy_to_device(s0d[k * BH : (k + 1) * BH])
        acts = self.buffers.get("acts" if keep else "acts_inf",
                                (T if keep else 1) * B * (p.na * H + p.nrd))
        pgb = self.buffers.get("pgb", B * p.nu * H)
        rdb = self._row_sums(B)
        if lensd is None:
            lensd = self._unbounded
        self._launch_cell("forward", B, (T, B, H, int(keep), xp, self.d_b, self.d_UT, ss,
                                         acts, pgb, xd if p.ir.reads_x else self._dummy,
                                         lensd, self._dummy if zmd is None else zmd, rdb))
        return xd, ss, acts, lensd, zmd

    def _row_sums(self, B: int) -> Any:
        """The kernels' scratch for row means (``rdb``), or the 1-element dummy."""
        n = self.plan.nrd
        return self.buffers.get("rdb", B * n * (self.hidden + 1)) if n else self._dummy

    def copy_last_state(self, saved: tuple, T: int, B: int, keep: bool, dst: Any) -> None:
        ss = saved[1]
        BH, S = B * self.hidden, self.plan.n_states
        dst[:BH].copy_to_device(ss[T * BH : (T + 1) * BH])
        kept, last = (T + 1, T) if keep else (2, T % 2)
        for k in range(1, S):
            at = (T + 1) * BH + ((k - 1) * kept + last) * BH
            dst[k * BH : (k + 1) * BH].copy_to_device(ss[at : at + BH])

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
        """Backward on device arrays after :meth:`forward_device` with ``keep``.
        Returns device ``(dx, ds0)`` and leaves the packed weight gradients in
        :attr:`d_grads`."""
        p, cell = self.plan, self.cell
        ir = p.ir
        xd, ss, acts, lensd, zmd = saved
        I, H = self.input_size, self.hidden
        BH, TB, S = B * H, T * B, p.n_states
        nxh = p.nx * H
        buf = self.buffers
        # Gradients no pass writes must read as zeros (their parameters do not matter).
        get = lambda name, n, zero: (self._zeros if zero else buf.get)(name, n)  # noqa: E731
        dgx = get("dgx", TB * nxh, cell.zero_filled("dgx"))
        dP = get("dP", TB * cell.dp_blocks * H,
                 any(cell.zero_filled("dP", g) for g in cell.dp_offset))
        dbp = get("dbp", TB * len(cell.apart) * H, cell.zero_filled("dbp"))
        xab = buf.get("xab", len(cell.xadj) * BH)
        dq = buf.get("dq", len(ir.groups) * BH)
        dcar = buf.get("dcar", 2 * S * BH)
        at = ((T - 1) % 2) * S * BH  # the carried gradient on the states of step T - 1
        dcar[at : at + S * BH].copy_to_device(dsTd)
        dxe = self._zeros("dxe", TB * H) if ir.reads_x else self._dummy
        ds0 = buf.get("ds0", S * BH)
        self._launch_cell("backward", B, (T, B, H, self.d_U, self.d_b, ss, acts,
                                          xd if ir.reads_x else self._dummy, dyd, dgx, dP,
                                          dbp, xab, dq, dcar, dxe, ds0, lensd,
                                          self._dummy if zmd is None else zmd,
                                          self._row_sums(B)))
        # Input and weight gradients: one product each over all steps.
        g = self.d_grads
        if p.nx:
            dx = buf.get("dx", TB * I)
            self._matmul(TB, I, nxh, dgx, 0, nxh, 1, self.d_params, 0, I, 1, dx, 0, I)
            self._matmul(nxh, I, TB, dgx, 0, 1, nxh, xd, 0, I, 1, g, 0, I)
        else:  # x is read element-wise only
            dx = self._zeros("dx", TB * I)
        if ir.reads_x:
            ew = self.geo.ew_threads
            self.m.addto[blocks(TB * H, ew), ew](TB * H, dxe, dx)
        for group in ir.groups:
            k, n = group.index, len(group.blocks)
            a, col, ld = self._dp_rows(k, TB, dgx, dP)
            s = ir.group_state(group)
            if s is None:  # the operand kept in a slot of every step
                b, b_off, ldb = acts, ir.slot(group.operand) * H, p.na * H + p.nrd
            else:  # the states before each step: steps 0..T-1 of its history
                b, b_off, ldb = ss, cell.state_index[s] * (T + 1) * BH, H
            self._matmul(n * H, H, TB, a, col, 1, ld, b, b_off, ldb, 1, g,
                         self.n_w + cell.offset[k] * H * H, H)
        for v in ir.vec_names:  # vector parameters: column sums over every step and row
            src, col, ld = self._vec_rows(v, TB, dgx, dP, dbp)
            self.m.colsum[blocks(H, self.geo.jt), self.geo.threads](
                TB, H, src, col, ld, g, self.n_w + self.n_u + p.v_index(v) * H)
        return dx, ds0

    def _dp_rows(self, g: int, TB: int, dgx: Any, dP: Any) -> tuple[Any, int, int]:
        """``(array, offset, row stride)`` of group ``g``'s product gradient rows."""
        cell, H = self.cell, self.hidden
        if g in cell.alias:
            return dgx, cell.alias[g] * H, self.plan.nx * H
        n = len(self.plan.ir.groups[g].blocks)
        return dP, cell.dp_offset[g] * TB * H, n * H

    def _vec_rows(self, v: str, TB: int, dgx: Any, dP: Any, dbp: Any
                  ) -> tuple[Any, int, int]:
        """``(array, offset, row stride)`` of vector ``v``'s gradient terms."""
        cell, H = self.cell, self.hidden
        src = cell.vec_source[v]
        if src[0] == "dgx":
            return dgx, src[1] * H, self.plan.nx * H
        if src[0] == "dbp":
            return dbp, src[1] * H, len(cell.apart) * H
        array, off, ld = self._dp_rows(src[1], TB, dgx, dP)
        return array, off + src[2] * H, ld
