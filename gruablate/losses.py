"""The losses a task can ask for (:data:`~gruablate.vocabulary.LOSSES`), in float64.

Each gives the mean loss over the predicted positions and its gradient with respect to
the outputs ``z``; the tasks score their predictions with the same primitives. Computed
in float64 whatever the model's dtype, so a reported loss does not depend on the
float32 rounding of a sum.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import LOSSES


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64, stable for large logits."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def softmax_nll(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood (nats) of integer targets ``y`` under logits ``z``."""
    lp = log_softmax(z)
    return -np.take_along_axis(lp, y[..., None].astype(np.intp), axis=-1)[..., 0]


def bernoulli_nll(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-position NLL (nats) of binary targets under logits, summed over the last axis.

    ``-[y log σ(z) + (1-y) log(1-σ(z))] = softplus(z) - y z``, with softplus written
    as ``max(z, 0) + log1p(exp(-|z|))`` so it neither overflows nor loses small values.
    """
    z = np.asarray(z, dtype=np.float64)
    softplus = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    return (softplus - y * z).sum(axis=-1)


def loss_and_grad(kind: str, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss over positions and its gradient with respect to the outputs ``z`` (float64)."""
    z64 = np.asarray(z, dtype=np.float64)
    if kind == "ce":
        lp = log_softmax(z64)
        n = y.size
        loss = -np.take_along_axis(lp, y[..., None].astype(np.intp), axis=-1).sum() / n
        dz = np.exp(lp)
        np.put_along_axis(
            dz, y[..., None].astype(np.intp),
            np.take_along_axis(dz, y[..., None].astype(np.intp), axis=-1) - 1.0, axis=-1,
        )
        return float(loss), dz / n
    if kind == "mse":
        diff = z64 - y
        n = diff.size
        return float((diff * diff).sum() / n), (2.0 / n) * diff
    if kind == "bernoulli":
        n = y.size // y.shape[-1]
        loss = bernoulli_nll(z64, y).sum() / n
        sig = 0.5 * (1.0 + np.tanh(0.5 * z64))  # σ(z) without overflow in exp
        return float(loss), (sig - y) / n
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
