"""The flat parameter buffer both plans share: ``W``, then ``U``, then the vectors."""

from __future__ import annotations

import numpy as np


def split_flat(flat: np.ndarray, nx: int, nu: int, input_size: int, hidden: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views ``W`` (nx·H, I), ``U`` (nu·H, H) and the vectors of a flat buffer laid out
    W, U, vectors (both plans' layout)."""
    n_w, n_u = nx * hidden * input_size, nu * hidden * hidden
    W = flat[:n_w].reshape(nx * hidden, input_size)
    U = flat[n_w : n_w + n_u].reshape(nu * hidden, hidden)
    return W, U, flat[n_w + n_u :]
