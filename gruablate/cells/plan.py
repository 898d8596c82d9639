"""The kernel plan: where each block of a variant lives in the packed arrays.

Every backend (the compiled CPU kernels, the CUDA kernels, the layer that owns the
parameters) reads these offsets; none of them re-derives them from the spec.

Packed layout for hidden size ``H`` (block offsets are in units of ``H``):

- ``W``  (NX·H, I): input weights of ``variant.x_blocks``, in block order;
- ``U``  (NH·H, H): recurrent weights of ``variant.h_blocks``; the first ``NHM`` blocks
  form the *main* recurrent product done on ``h`` each step; with the reset placed
  *before* the product the candidate's block is last and multiplies ``r ⊙ h`` instead;
- ``b``  (NB·H,): the biases of ``variant.b_names``;
- ``acts`` (T, B, NA·H): the value of every block (gate or candidate) at every step;
- ``aux``  (T, B, H): ``r ⊙ h`` (reset before), ``U_c h + b_hc`` (reset after) or the
  LSTM cell state ``c_t``; unused otherwise.

The plan is the one home of this layout: the layer splits its flat parameter buffer
with :meth:`KernelPlan.split` and names its blocks with :meth:`KernelPlan.named`, every
backend sizes its buffers from it, and the flags below (``has_cell_state``,
``reset_before``, ``carries_gate_part``, ...) are what a backend asks instead of
testing a variant's switches itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .layout import split_flat
from .spec import Variant


@dataclass(frozen=True)
class KernelPlan:
    variant: Variant
    x_off: dict[str, int]  # block -> row block in W / column block in the input product
    h_off: dict[str, int]  # block -> row block in U (main product first)
    b_off: dict[str, int]  # bias name ("b_r", "b_hc", ...) -> segment of b
    a_off: dict[str, int]  # block -> column block in acts
    nx: int
    nh: int
    nhm: int
    nb: int
    na: int
    uses_aux: bool

    @property
    def reset_before(self) -> bool:
        return self.variant.reset_placement == "before"

    @property
    def n_states(self) -> int:
        """State arrays a layer carries: 1 (``h``) or 2 (``h`` and the cell state ``c``)."""
        return len(self.variant.state_names)

    @property
    def has_cell_state(self) -> bool:
        """The LSTM family: a cell state ``c`` beside ``h`` (kept in ``aux``)."""
        return self.n_states == 2

    @property
    def carries_gate_part(self) -> bool:
        """The backward pass carries one gate's partial gradient between its two phases
        (the MGU's tied gate, which both writes and resets: ``GPART`` in the cell code)."""
        return self.variant.reset == "tied"

    @property
    def candidate_sees_h(self) -> bool:
        """The candidate has a recurrent weight block ``U_c`` (or ``U_g``)."""
        return self.variant.candidate.sees_h

    # ------------------------------------------------------------------ layout
    def param_sizes(self, input_size: int, hidden: int) -> tuple[int, int, int]:
        """Elements of ``W``, ``U`` and ``b``, in that order in the flat buffer."""
        return self.nx * hidden * input_size, self.nh * hidden * hidden, self.nb * hidden

    def param_count(self, input_size: int, hidden: int) -> int:
        """Scalars of one layer: the length of its flat parameter buffer."""
        return sum(self.param_sizes(input_size, hidden))

    def split(self, flat: np.ndarray, input_size: int, hidden: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The packed ``W`` (NX·H, I), ``U`` (NH·H, H) and ``b`` (NB·H) as views of a
        flat buffer of :meth:`param_count` elements (parameters or gradients)."""
        return split_flat(flat, self.nx, self.nh, input_size, hidden)

    def named(self, W: np.ndarray, U: np.ndarray, b: np.ndarray, hidden: int
              ) -> dict[str, np.ndarray]:
        """The named blocks (``W_r``, ``U_c``, ``b_hc``, ...) as views of the packed arrays."""
        H = hidden
        named: dict[str, np.ndarray] = {}
        for blk, k in self.x_off.items():
            named[f"W_{blk}"] = W[k * H : (k + 1) * H]
        for blk, k in self.h_off.items():
            named[f"U_{blk}"] = U[k * H : (k + 1) * H]
        for name, k in self.b_off.items():
            named[name] = b[k * H : (k + 1) * H]
        return named

    def saved_shapes(self, seq_len: int, batch: int, hidden: int
                     ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Shapes of ``acts`` and ``aux``, what a training forward keeps for the backward
        pass (``aux`` is a (T, 1, 1) placeholder when the variant uses none)."""
        T, B, H = seq_len, batch, hidden
        return (T, B, self.na * H), ((T, B, H) if self.uses_aux else (T, 1, 1))


def make_plan(variant: Variant) -> KernelPlan:
    """The layout of ``variant``'s parameters and kept values: a :class:`KernelPlan`
    for a switch spec, an :class:`~.irplan.IRPlan` (same interface) for equations."""
    if variant.is_equations:
        return _ir_plan(variant)
    return _switch_plan(variant)


@cache
def _ir_plan(variant: Variant):
    from .irplan import IRPlan

    return IRPlan(variant, variant.cell)


def _switch_plan(variant: Variant) -> KernelPlan:
    blocks = variant.blocks
    x_blocks = [b.name for b in variant.x_blocks]
    h_blocks = [b.name for b in variant.h_blocks]
    before = variant.reset_placement == "before"
    cand = variant.candidate.name
    if before and cand in h_blocks:
        # The candidate's recurrent product runs on r ⊙ h, after the gates: keep it last.
        assert h_blocks[-1] == cand
        nhm = len(h_blocks) - 1
    else:
        nhm = len(h_blocks)
    b_names = list(variant.b_names)
    uses_aux = variant.family == "lstm" or variant.reset_placement in ("before", "after")
    return KernelPlan(
        variant=variant,
        x_off={n: i for i, n in enumerate(x_blocks)},
        h_off={n: i for i, n in enumerate(h_blocks)},
        b_off={n: i for i, n in enumerate(b_names)},
        a_off={b.name: i for i, b in enumerate(blocks)},
        nx=len(x_blocks),
        nh=len(h_blocks),
        nhm=nhm,
        nb=len(b_names),
        na=len(blocks),
        uses_aux=uses_aux,
    )
