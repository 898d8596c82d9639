"""The host step of a :class:`~gruablate.model.Model`: NumPy around the layers.

The default model runner of every backend whose layers take and give host arrays
(the CPU's, and any a user registers): encode, run the layers, read out ``z = V h + c``,
the loss and its gradient in float64 (:mod:`gruablate.losses`), then back through the
readout and the layers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NonFiniteError
from ..losses import loss_and_grad


class HostRunner:
    """Runs ``model``'s steps on the host through its layers' public API.

    ``model`` is a :class:`gruablate.model.Model` (named, not imported: the model
    imports the backends)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._saved: tuple | None = None

    def params_changed(self) -> None:
        for layer in self.model.layers:
            layer.params_changed()

    def sync_to_host(self) -> None:  # the host buffers are the parameters
        pass

    def _run(self, x: np.ndarray, state: list | None, keep: bool) -> tuple[tuple, list]:
        M = self.model
        h = M.encode(x)
        if keep and np.may_share_memory(h, x):
            h = h.copy()  # kept for backward: the caller may overwrite its x before then
        states = state if state is not None else [None] * len(M.layers)
        last = []
        for k, (layer, s) in enumerate(zip(M.layers, states, strict=True)):
            # The runner owns every array between layers: no defensive copies needed.
            h, s_last = layer.forward(h, s, keep=keep, copy=False)
            if not np.isfinite(h).all():
                raise NonFiniteError(f"layer {k} produced a non-finite activation")
            last.append(s_last)
        top = h if M.readout == "every" else h[-1]
        z = top @ M.V.T + M.c
        return (top, z, h.shape[:2]), last

    def predict(self, x: np.ndarray, state: list | None) -> tuple[np.ndarray, list]:
        (_, z, _), last = self._run(x, state, keep=False)
        return z, last

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None) -> tuple[float, list]:
        (top, z, steps), last = self._run(x, state, keep=True)
        loss, dz = loss_and_grad(self.model.loss_kind, z, y)
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        self._saved = (top, dz.astype(self.model.dtype), steps)
        return loss, last

    def backward(self) -> None:
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        M = self.model
        top, dz, (T, B) = self._saved
        H = M.hidden
        dz2 = dz.reshape(-1, M.output_size)
        # A contiguous copy of dz^T first: OpenBLAS took ~30x longer on the transposed
        # view of this tall, narrow matrix (measured: 5 ms against 0.16 ms).
        M.V_grad[...] = np.ascontiguousarray(dz2.T) @ top.reshape(-1, H)
        M.c_grad[:] = dz2.sum(axis=0)
        dtop = dz @ M.V
        if not np.isfinite(dtop).all():  # finite loss, overflowing gradient: diverged too
            raise NonFiniteError("the gradient of the readout is not finite")
        if M.readout == "every":
            dy = np.ascontiguousarray(dtop)
        else:
            dy = np.zeros((T, B, H), dtype=M.dtype)
            dy[-1] = dtop
        for layer in reversed(M.layers):
            dy, _, _ = layer.backward(dy)
        self._saved = None
