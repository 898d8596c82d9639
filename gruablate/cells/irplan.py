"""Where each parameter and kept value of an equations cell lives: the layout of a
:class:`~.ir.CellIR`, with the interface of :class:`~.plan.KernelPlan`.

Packed layout for hidden size ``H`` (offsets in units of ``H`` rows or elements):

- ``W`` (NX·H, I): the ``W_k`` in order of first use;
- ``U`` (NU·H, H): the ``U_k`` by group (:attr:`CellIR.groups`), so each group's
  product is one contiguous matrix;
- ``b`` (NV·H,): every vector parameter, biases ``b_k`` and diagonals ``p_k`` alike, in
  order of first use;
- ``acts`` (T, B, NA·H): the cell's slots, one per kept value; ``aux`` is unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import CellIR
from .layout import split_flat


@dataclass(frozen=True, eq=False)
class IRPlan:
    variant: object  # the Variant (not typed here: spec imports nothing of the plans)
    ir: CellIR

    # ---------------------------------------------------------------- sizes
    @property
    def nx(self) -> int:
        return len(self.ir.w_names)

    @property
    def nu(self) -> int:
        return len(self.ir.u_names)

    @property
    def nv(self) -> int:
        return len(self.ir.vec_names)

    @property
    def na(self) -> int:
        return len(self.ir.slots)

    uses_aux = False  # what memory.layer_bytes asks: every kept value is a slot of acts

    @property
    def n_states(self) -> int:
        return len(self.ir.states)

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
        H = hidden
        return self.nx * H * input_size, self.nu * H * H, self.nv * H

    def param_count(self, input_size: int, hidden: int) -> int:
        return sum(self.param_sizes(input_size, hidden))

    def split(self, flat: np.ndarray, input_size: int, hidden: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return split_flat(flat, self.nx, self.nu, input_size, hidden)

    def named(self, W: np.ndarray, U: np.ndarray, b: np.ndarray, hidden: int
              ) -> dict[str, np.ndarray]:
        """Every parameter by its name in the equations, in order of first use."""
        H = hidden
        out: dict[str, np.ndarray] = {}
        for name, role in self.ir.params.items():
            if role == "W":
                k = self.w_index(name)
                out[name] = W[k * H : (k + 1) * H]
            elif role == "U":
                k = self.u_index(name)
                out[name] = U[k * H : (k + 1) * H]
            else:
                k = self.v_index(name)
                out[name] = b[k * H : (k + 1) * H]
        return out

    def saved_shapes(self, seq_len: int, batch: int, hidden: int
                     ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return (seq_len, batch, max(1, self.na) * hidden), (seq_len, 1, 1)
