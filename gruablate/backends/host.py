"""The host step of a :class:`~gruablate.model.Model`: NumPy around the layers.

The default model runner of every backend whose layers take and give host arrays
(the CPU's, and any a user registers): encode, run the layers, read out ``z = V h + c``,
the loss and its gradient in float64 (:mod:`gruablate.losses`), then back through the
readout and the layers. It applies the model's dropout and zoneout (the masks of
``Model.masks``): each layer's zoneout mask goes to its forward (and so through its
backward); a dropout mask multiplies a layer's output on the way up and the gradient
on the way down. A bidirectional model's layer is two: both read the same input, the
second with ``reverse=True``, and their outputs are concatenated (forward first); on
the way down the gradient is split into the two halves and the two input gradients
summed. Sequence lengths go to every layer (which stops a row after its last step and
outputs zeros past it); the loss reads the real steps only, and a last-step readout
each row's own last step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NonFiniteError
from ..losses import loss_and_grad
from .state import real_steps


class HostRunner:
    """Runs ``model``'s steps on the host through its layers' public API.

    ``model`` is a :class:`gruablate.model.Model` (named, not imported: the model
    imports the backends)."""

    #: what this runner applies beyond the plain step (see Backend.runner_features)
    features: frozenset[str] = frozenset({"dropout", "zoneout", "bidirectional", "lengths"})

    def __init__(self, model: Any) -> None:
        self.model = model
        self._saved: tuple | None = None
        #: the masks of the last training forward, per layer (and direction)
        #: ``(zoneout, dropout)`` (``Model.masks``); None without dropout and zoneout
        self.masks: list | None = None

    def params_changed(self) -> None:
        for layer in self.model.layers:
            layer.params_changed()

    def sync_to_host(self) -> None:  # the host buffers are the parameters
        pass

    def _run(self, x: np.ndarray, state: list | None, keep: bool,
             lengths: np.ndarray | None = None) -> tuple[tuple, list, list | None]:
        M = self.model
        h = M.encode(x)
        if keep and np.may_share_memory(h, x):
            h = h.copy()  # kept for backward: the caller may overwrite its x before then
        states = state if state is not None else [None] * len(M.layers)
        # Training draws new dropout and zoneout masks; evaluation takes zoneout's
        # expectation. None when both are off: the plain step, nothing drawn.
        masks = M.masks(h.shape[0], h.shape[1], training=keep)
        if len(states) != len(M.layers):
            raise ValueError(f"state must hold one initial state per layer and direction"
                             f" ({len(M.layers)}), got {len(states)}")
        D, last = M.directions, []
        for k in range(M.depth):
            outs = []
            for d in range(D):  # both directions read the same input h
                i = k * D + d
                zoneout, dropout = (None, None) if masks is None else masks[i]
                # The runner owns every array between layers: no defensive copies needed.
                y, s_last = M.layers[i].forward(h, states[i], lengths=lengths,
                                                reverse=d == 1, zoneout=zoneout, keep=keep,
                                                copy=False)
                if not np.isfinite(y).all():
                    which = " (reverse direction)" if d else ""
                    raise NonFiniteError(f"layer {k}{which} produced a non-finite activation")
                if dropout is not None:
                    y = y * dropout  # a new array: the layer keeps its own output
                outs.append(y)
                last.append(s_last)
            h = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        top = h if M.readout == "every" else _last_steps(h, M.hidden, D, lengths)
        z = top @ M.V.T + M.c
        return (top, z, h.shape[:2]), last, masks

    def predict(self, x: np.ndarray, state: list | None,
                lengths: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        (_, z, _), last, _ = self._run(x, state, keep=False, lengths=lengths)
        return z, last

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None,
                lengths: np.ndarray | None = None) -> tuple[float, list]:
        (top, z, steps), last, masks = self._run(x, state, keep=True, lengths=lengths)
        self.masks = masks
        kind = self.model.loss_kind
        if lengths is None or self.model.readout == "last":
            loss, dz = loss_and_grad(kind, z, y)
        else:  # the real steps' predictions only: the padding's targets are not read
            y = np.asarray(y)
            real = real_steps(y, steps[0], lengths)
            loss, dz_real = loss_and_grad(kind, z[real], y[real])
            dz = np.zeros(z.shape, dtype=np.float64)
            dz[real] = dz_real
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        self._saved = (top, dz.astype(self.model.dtype), steps, masks, lengths)
        return loss, last

    def backward(self) -> None:
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        M = self.model
        top, dz, (T, B), masks, lengths = self._saved
        H, W, D = M.hidden, M.width, M.directions
        dz2 = dz.reshape(-1, M.output_size)
        # A contiguous copy of dz^T first: OpenBLAS took ~30x longer on the transposed
        # view of this tall, narrow matrix (measured: 5 ms against 0.16 ms).
        M.V_grad[...] = np.ascontiguousarray(dz2.T) @ top.reshape(-1, W)
        M.c_grad[:] = dz2.sum(axis=0)
        dtop = dz @ M.V
        if not np.isfinite(dtop).all():  # finite loss, overflowing gradient: diverged too
            raise NonFiniteError("the gradient of the readout is not finite")
        if M.readout == "every":
            dy = np.ascontiguousarray(dtop)
        else:
            dy = np.zeros((T, B, W), dtype=M.dtype)
            # the forward direction's last step (each row's own, with lengths)
            dy[_last_index(T, lengths), np.arange(B), :H] = dtop[:, :H]
            if D == 2:
                dy[0, :, H:] = dtop[:, H:]  # the reverse direction's last step: step 0
        for k in reversed(range(M.depth)):
            dx = None
            for d in range(D):
                i = k * D + d
                g = dy if D == 1 else np.ascontiguousarray(dy[:, :, d * H:(d + 1) * H])
                if masks is not None and masks[i][1] is not None:
                    g = g * masks[i][1]  # through the dropout above layer k
                g, _, _ = M.layers[i].backward(g)
                dx = g if dx is None else dx + g  # both directions read the same input
            dy = dx
        self._saved = None


def _last_index(T: int, lengths: np.ndarray | None) -> np.ndarray | int:
    """Each row's last real step: ``T − 1``, or ``lengths − 1``."""
    return T - 1 if lengths is None else lengths - 1


def _last_steps(h: np.ndarray, H: int, D: int, lengths: np.ndarray | None = None
                ) -> np.ndarray:
    """What a last-step readout reads of the top layer's (T, B, D·H) output: each
    direction's own last step, the forward one's at step T − 1 (with lengths: each
    row's last real step) and the reverse one's at step 0 (where it has read the whole
    sequence)."""
    T, B = h.shape[:2]
    forward = h[_last_index(T, lengths), np.arange(B), :H]
    if D == 1:
        return forward
    return np.concatenate([forward, h[0, :, H:]], axis=1)
