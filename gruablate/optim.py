"""Adam with clipping by global gradient norm and an optional warm-up / decay schedule.

The optimiser works on flat buffers (a layer's ``flat_params`` / ``flat_grads`` and the
readout's), updated in place by one fused Numba loop per buffer. Norms are accumulated
in float64 in a fixed order, so a run is bitwise reproducible on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

DECAYS = ("none", "cosine", "linear")


@njit(cache=True, nogil=True)
def _sumsq(g):
    acc = 0.0  # float64 whatever g's dtype: a float32 sum of squares overflows early
    for i in range(g.size):
        v = float(g[i])
        acc += v * v
    return acc


@njit(cache=True, nogil=True)
def _adam_update(p, g, m, v, lr, beta1, beta2, eps, scale, bc1, bc2):
    for i in range(p.size):
        gi = float(g[i]) * scale
        mi = beta1 * float(m[i]) + (1.0 - beta1) * gi
        vi = beta2 * float(v[i]) + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


class Adam:
    """Adam (Kingma & Ba 2015) over a list of ``(params, grads)`` flat buffers.

    Parameters
    ----------
    buffers:
        Pairs of 1-D contiguous arrays; ``params`` are updated in place from ``grads``.
    lr:
        Peak learning rate.
    clip:
        Rescale the gradients so that their global L2 norm is at most ``clip``
        (``None`` or 0 turns clipping off).
    warmup:
        Steps of linear warm-up from ``lr / warmup`` to ``lr``.
    decay, total_steps:
        ``"none"``, or ``"cosine"`` / ``"linear"`` decay to zero at ``total_steps``.
    """

    #: False: the parameters updated are the host's, which a device backend must
    #: re-upload (``Model.params_changed``); ``gruablate.backends.cuda.optim.DeviceAdam``
    #: updates the device's.
    on_device = False

    def __init__(
        self,
        buffers: list[tuple[np.ndarray, np.ndarray]],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        clip: float | None = 1.0,
        warmup: int = 0,
        decay: str = "none",
        total_steps: int | None = None,
    ) -> None:
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if clip is not None and not (math.isfinite(clip) and clip >= 0):
            raise ValueError(f"clip must be a non-negative number or None, got {clip!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
        if decay != "none" and not total_steps:
            raise ValueError(f"decay {decay!r} needs total_steps")
        for p, g in buffers:
            if p.ndim != 1 or p.shape != g.shape or not p.flags.c_contiguous:
                raise ValueError("buffers must be pairs of equal 1-D contiguous arrays")
        self.buffers = buffers
        self.lr, self.beta1, self.beta2, self.eps = float(lr), betas[0], betas[1], eps
        self.clip = clip or None
        self.warmup, self.decay, self.total_steps = warmup, decay, total_steps
        self.state = [(np.zeros_like(p), np.zeros_like(p)) for p, _ in buffers]
        self.t = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of (1-based) ``step`` under the warm-up and decay schedule."""
        factor = 1.0
        if self.warmup and step <= self.warmup:
            factor = step / self.warmup
        elif self.decay != "none":
            span = max(1, self.total_steps - self.warmup)  # type: ignore[operator]
            frac = min(1.0, (step - self.warmup) / span)
            factor = 0.5 * (1 + math.cos(math.pi * frac)) if self.decay == "cosine" else 1 - frac
        return self.lr * factor

    def grad_norm(self) -> float:
        """Global L2 norm of the current gradients."""
        return math.sqrt(sum(_sumsq(g) for _, g in self.buffers))

    def step(self) -> float:
        """One update from the current gradients; returns their global norm before clipping.

        A non-finite norm is returned without touching the parameters, so the caller
        can stop a diverged run with the last finite parameters intact.
        """
        norm = self.grad_norm()
        if not math.isfinite(norm):
            return norm
        self.t += 1
        scale = 1.0
        if self.clip is not None and norm > self.clip:
            scale = self.clip / norm
        self._update(self.lr_at(self.t), scale, 1.0 - self.beta1**self.t,
                     1.0 - self.beta2**self.t)
        return norm

    def _update(self, lr: float, scale: float, bc1: float, bc2: float) -> None:
        """Adam's update of every buffer: gradient scale (clipping), bias corrections."""
        for (p, g), (m, v) in zip(self.buffers, self.state, strict=True):
            _adam_update(p, g, m, v, lr, self.beta1, self.beta2, self.eps, scale, bc1, bc2)
