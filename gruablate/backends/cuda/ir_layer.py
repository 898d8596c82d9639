"""One layer of an equations cell on the GPU: the kernels of :mod:`.ir_source`.

The host and device entry points are those of :class:`~.layer.CudaLayer` (which this
extends): the input products of all steps before the persistent kernel, and after the
backward one product per weight matrix — ``dx = dgx W`` (plus the element-wise part of a
cell that reads ``x`` itself), ``dW = dgx^T x``, per group ``dU = dP^T operand`` — and a
column sum per vector parameter from wherever its gradient terms were left.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...cells.irplan import IRPlan
from .kernels import blocks, ir_kernels
from .layer import CudaLayer
from .source import Geometry


class CudaIRLayer(CudaLayer):
    """A layer of an equations cell (``plan`` an :class:`IRPlan`) on the GPU."""

    plan: IRPlan

    def __init__(self, plan: IRPlan, dtype: str, input_size: int, hidden: int,
                 params: np.ndarray, grads: np.ndarray) -> None:
        from .ir_source import CudaCellPrinter

        #: what the printed kernels decided (buffers, aliases, where gradients go)
        self.cell = CudaCellPrinter(plan)
        super().__init__(plan, dtype, input_size, hidden, params, grads)

    @property
    def recurrent(self) -> bool:
        return bool(self.plan.ir.groups)

    def _module(self, geo: Geometry) -> Any:
        return ir_kernels(self.plan.variant, self.dtype, geo)

    @staticmethod
    def _signatures(dtype: str) -> dict[str, tuple]:
        from .ir_source import ir_signatures

        return ir_signatures(dtype)

    def _zeros(self, name: str, size: int) -> Any:
        buf = self.buffers.get(name, size)
        ew = self.geo.ew_threads
        self.m.zero[blocks(buf.size, ew), ew](buf.size, buf)
        return buf

    # ---------------------------------------------------------------- forward
    def forward_device(self, xd: Any, s0d: Any, T: int, B: int, keep: bool) -> tuple:
        """The forward pass on device arrays (``xd`` flat (T, B, I), ``s0d`` flat
        (S, B, H)). Returns ``(xd, ss, acts)``: ``ss[B*H:(T+1)*B*H]`` is the flat output
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
                                (T if keep else 1) * B * p.na * H)
        pgb = self.buffers.get("pgb", B * p.nu * H)
        self._launch_cell("forward", B, (T, B, H, int(keep), xp, self.d_b, self.d_UT, ss,
                                         acts, pgb, xd if p.ir.reads_x else self._dummy))
        return xd, ss, acts

    def copy_last_state(self, saved: tuple, T: int, B: int, keep: bool, dst: Any) -> None:
        ss = saved[1]
        BH, S = B * self.hidden, self.plan.n_states
        dst[:BH].copy_to_device(ss[T * BH : (T + 1) * BH])
        kept, last = (T + 1, T) if keep else (2, T % 2)
        for k in range(1, S):
            at = (T + 1) * BH + ((k - 1) * kept + last) * BH
            dst[k * BH : (k + 1) * BH].copy_to_device(ss[at : at + BH])

    # --------------------------------------------------------------- backward
    def backward_device(self, saved: tuple, dyd: Any, dsTd: Any, T: int, B: int) -> tuple:
        """Backward on device arrays after :meth:`forward_device` with ``keep``.
        Returns device ``(dx, ds0)`` and leaves the packed weight gradients in
        :attr:`d_grads`."""
        p, cell = self.plan, self.cell
        ir = p.ir
        xd, ss, acts = saved
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
                                          dbp, xab, dq, dcar, dxe, ds0))
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
                b, b_off, ldb = acts, ir.slot(group.operand) * H, p.na * H
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
