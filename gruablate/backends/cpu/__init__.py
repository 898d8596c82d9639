"""The CPU backend: Numba kernels printed per cell (:mod:`.kernels`) on a small
shared runtime of SIMD products and a deterministic thread launcher (:mod:`.runtime`).

The layer's kernels read the parameters in place from the host buffers, so the model's
step is the host one and the optimiser the host Adam (the :class:`Backend` defaults).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ...cells.plan import KernelPlan
from ...cells.spec import Variant
from ..base import Backend
from ..state import check_zoneout

#: What the kernels of a cell without zoneout get for its (unread) mask.
_NO_MASK = {dt: np.zeros((1, 1, 1), dtype=dt) for dt in ("float32", "float64")}


class CpuLayer:
    """One layer's Numba CPU kernels over the packed views of its flat buffers."""

    def __init__(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
                 params: np.ndarray, grads: np.ndarray) -> None:
        from .kernels import kernels  # numba compiles on first use, not on import

        self.plan, self.dtype, self.hidden = plan, dtype, hidden
        self.W, self.U, self.b = plan.split(params, input_size, hidden)
        self.dW, self.dU, self.db = plan.split(grads, input_size, hidden)
        self.k: ModuleType = kernels(plan.variant, dtype, plan.zoneout)

    def forward(self, x: np.ndarray, s0: np.ndarray, keep: bool,
                lengths: np.ndarray | None = None, zoneout: np.ndarray | None = None):
        T, B, _ = x.shape
        lens = np.full(B, T, dtype=np.int64) if lengths is None else lengths
        check_zoneout(self.plan, zoneout)
        zm = _NO_MASK[self.dtype] if zoneout is None else zoneout
        y = np.empty((T, B, self.hidden), dtype=self.dtype)
        sT = np.empty_like(s0)
        if not keep:
            self.k.forward_infer(x, s0, self.W, self.U, self.b, y, sT, lens, zm)
            return y, sT, ()
        acts = np.empty(self.plan.saved_shapes(T, B, self.hidden), dtype=self.dtype)
        self.k.forward_train(x, s0, self.W, self.U, self.b, y, sT, acts, lens, zm)
        return y, sT, (acts, lens, zm)

    def backward(self, saved: tuple, dy: np.ndarray, dsT: np.ndarray):
        x, s0, y, acts, lens, zm = saved
        dx = np.empty_like(x)
        ds0 = np.empty_like(s0)
        self.k.backward(x, s0, self.W, self.U, self.b, y, acts, lens, zm, dy, dsT, dx, ds0,
                        self.dW, self.dU, self.db)
        return dx, ds0

    def params_changed(self) -> None:  # the kernels read the host buffers in place
        pass


class CpuBackend(Backend):
    """Numba on the host CPU: always available."""

    name = "cpu"
    torch_device = "cpu"

    def layer(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
              params: np.ndarray, grads: np.ndarray) -> CpuLayer:
        return CpuLayer(plan, dtype, input_size, hidden, params, grads)

    def describe(self) -> dict[str, str]:
        """The products' register tile on this CPU (``avx2`` or ``avx512``, see
        :func:`.runtime.choose_tile`)."""
        from .runtime import TILE

        return {"cpu_tile": TILE}

    def kernel_source(self, variant: Variant, dtype: str) -> str:
        from .kernels import kernel_source

        return kernel_source(variant, dtype)

    def is_compiled(self, variant: Variant, dtype: str) -> bool:
        from .kernels import kernels_compiled

        return kernels_compiled(variant, dtype)
