"""The kernel plan: where each parameter and kept value of a cell lives.

Every variant, a switch spec or an equations spec, becomes a :class:`~.ir.CellIR` (a
switch spec through the equations it renders) and every backend prints its kernels
from that graph; the plan is the graph's memory layout, which the backends, the layer
that owns the parameters and the memory estimate read instead of re-deriving it.

Packed layout for hidden size ``H`` (offsets in units of ``H`` rows or elements):

- ``W`` (NX·H, I): the ``W_k`` in order of first use;
- ``U`` (NU·H, H): the ``U_k`` by group (:attr:`CellIR.groups`), so each group's
  product is one contiguous matrix;
- ``b`` (NV·H,): every vector parameter, biases ``b_k`` and diagonals ``p_k`` alike, in
  order of first use;
- ``acts`` (T, B, NA·H + NRD): the cell's slots, one per value the backward pass
  reads, then one number per reduction (a row mean, :attr:`CellIR.reductions`).

For every switch built-in this is the layout its stored runs were trained in (each
named block at the same offset), and :meth:`KernelPlan.named` lists a switch spec's
blocks as they lie in memory (``W``, then ``U``, then the biases), the order its
initialisers have always drawn them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .ir import CellIR
from .layout import split_flat
from .spec import Variant


@dataclass(frozen=True, eq=False)
class KernelPlan:
    variant: Variant
    ir: CellIR

    # ---------------------------------------------------------------- sizes
    @property
    def nx(self) -> int:
        """``W`` blocks (rows of ``W`` in units of ``H``)."""
        return len(self.ir.w_names)

    @property
    def nu(self) -> int:
        """``U`` blocks (rows of ``U`` in units of ``H``)."""
        return len(self.ir.u_names)

    @property
    def nv(self) -> int:
        """Vector parameters (segments of ``b``)."""
        return len(self.ir.vec_names)

    @property
    def na(self) -> int:
        """Slots kept per step for the backward pass."""
        return len(self.ir.slots)

    @property
    def nrd(self) -> int:
        """Reductions (row means) kept per row and step after the slots."""
        return len(self.ir.reductions)

    @property
    def n_states(self) -> int:
        """States the cell carries (``h`` first)."""
        return len(self.ir.states)

    @property
    def zoneout(self) -> bool:
        """The kernels take a zoneout mask (:meth:`CellIR.zoneout`)."""
        return self.ir.zoneout

    # ---------------------------------------------------------------- offsets
    def w_index(self, name: str) -> int:
        return self.ir.w_names.index(name)

    def u_index(self, name: str) -> int:
        return self.ir.u_names.index(name)

    def v_index(self, name: str) -> int:
        return self.ir.vec_names.index(name)

    def group_offset(self, g: int) -> int:
        """First U block of group ``g``."""
        return sum(len(x.blocks) for x in self.ir.groups[:g])

    # ---------------------------------------------------------------- layout
    def param_sizes(self, input_size: int, hidden: int) -> tuple[int, int, int]:
        """Elements of ``W``, ``U`` and ``b``, in that order in the flat buffer."""
        H = hidden
        return self.nx * H * input_size, self.nu * H * H, self.nv * H

    def param_count(self, input_size: int, hidden: int) -> int:
        """Scalars of one layer: the length of its flat parameter buffer."""
        return sum(self.param_sizes(input_size, hidden))

    def split(self, flat: np.ndarray, input_size: int, hidden: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The packed ``W`` (NX·H, I), ``U`` (NU·H, H) and ``b`` (NV·H) as views of a
        flat buffer of :meth:`param_count` elements (parameters or gradients)."""
        return split_flat(flat, self.nx, self.nu, input_size, hidden)

    def named(self, W: np.ndarray, U: np.ndarray, b: np.ndarray, hidden: int
              ) -> dict[str, np.ndarray]:
        """Every parameter by its name, as a view of the packed arrays: an equations
        spec's in order of first use, a switch spec's in memory order (W, U, b)."""
        H, arrays = hidden, (W, U, b)
        names = list(self.ir.params)
        if not self.variant.is_equations:
            names.sort(key=self._place)  # memory order
        out: dict[str, np.ndarray] = {}
        for name in names:
            a, k = self._place(name)
            out[name] = arrays[a][k * H : (k + 1) * H]
        return out

    def _place(self, name: str) -> tuple[int, int]:
        """Where parameter ``name`` lies: (0 ``W``, 1 ``U`` or 2 ``b``; its block)."""
        role = self.ir.params[name]
        if role == "W":
            return 0, self.w_index(name)
        if role == "U":
            return 1, self.u_index(name)
        return 2, self.v_index(name)

    def saved_shapes(self, seq_len: int, batch: int, hidden: int) -> tuple[int, int, int]:
        """Shape of ``acts``, what a training forward keeps for the backward pass."""
        return seq_len, batch, max(1, self.na) * hidden + self.nrd


@cache
def make_plan(variant: Variant, zoneout: bool = False) -> KernelPlan:
    """The layout of ``variant``'s parameters and kept values (one per variant), of its
    cell with zoneout on ``h`` if asked (the same parameters, one more input)."""
    return KernelPlan(variant, variant.zoneout_cell if zoneout else variant.cell)
