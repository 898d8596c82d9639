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
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import Variant


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
        return len(self.variant.state_names)


def make_plan(variant: Variant) -> KernelPlan:
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
