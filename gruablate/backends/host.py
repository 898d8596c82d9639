"""The host step of a :class:`~gruablate.model.Model`: NumPy around the layers.

The default model runner of every backend whose layers take and give host arrays
(the CPU's, and any a user registers): encode, run the layers, read out ``z = V h + c``,
the loss and its gradient in float64 (:mod:`gruablate.losses`), then back through the
readout and the layers. It applies the model's dropout and zoneout (the masks of
``Model.masks``): each layer's zoneout mask goes to its forward (and so through its
backward); a dropout mask multiplies a layer's output on the way up and the gradient
on the way down.
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

    #: what this runner applies beyond the plain step (see Backend.runner_features)
    features: frozenset[str] = frozenset({"dropout", "zoneout"})

    def __init__(self, model: Any) -> None:
        self.model = model
        self._saved: tuple | None = None
        #: the masks of the last training forward, per layer ``(zoneout, dropout)``
        #: (``Model.masks``); None without dropout and zoneout
        self.masks: list | None = None

    def params_changed(self) -> None:
        for layer in self.model.layers:
            layer.params_changed()

    def sync_to_host(self) -> None:  # the host buffers are the parameters
        pass

    def _run(self, x: np.ndarray, state: list | None, keep: bool
             ) -> tuple[tuple, list, list | None]:
        M = self.model
        h = M.encode(x)
        if keep and np.may_share_memory(h, x):
            h = h.copy()  # kept for backward: the caller may overwrite its x before then
        states = state if state is not None else [None] * len(M.layers)
        # Training draws new dropout and zoneout masks; evaluation takes zoneout's
        # expectation. None when both are off: the plain step, nothing drawn.
        masks = M.masks(h.shape[0], h.shape[1], training=keep)
        last = []
        for k, (layer, s) in enumerate(zip(M.layers, states, strict=True)):
            zoneout, dropout = (None, None) if masks is None else masks[k]
            # The runner owns every array between layers: no defensive copies needed.
            h, s_last = layer.forward(h, s, zoneout=zoneout, keep=keep, copy=False)
            if not np.isfinite(h).all():
                raise NonFiniteError(f"layer {k} produced a non-finite activation")
            if dropout is not None:
                h = h * dropout  # a new array: the layer keeps its own output
            last.append(s_last)
        top = h if M.readout == "every" else h[-1]
        z = top @ M.V.T + M.c
        return (top, z, h.shape[:2]), last, masks

    def predict(self, x: np.ndarray, state: list | None) -> tuple[np.ndarray, list]:
        (_, z, _), last, _ = self._run(x, state, keep=False)
        return z, last

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None) -> tuple[float, list]:
        (top, z, steps), last, masks = self._run(x, state, keep=True)
        self.masks = masks
        loss, dz = loss_and_grad(self.model.loss_kind, z, y)
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        self._saved = (top, dz.astype(self.model.dtype), steps, masks)
        return loss, last

    def backward(self) -> None:
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        M = self.model
        top, dz, (T, B), masks = self._saved
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
        for k in reversed(range(len(M.layers))):
            if masks is not None and masks[k][1] is not None:
                dy = dy * masks[k][1]  # through the dropout above layer k
            dy, _, _ = M.layers[k].backward(dy)
        self._saved = None
