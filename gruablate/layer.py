"""`RecurrentLayer`: one layer of any variant — parameters, initialisation, dispatch.

The parameters live in one flat buffer (``flat_params``); the packed matrices the
kernels take (``W``, ``U``, ``b``, see :mod:`gruablate.kernels.plan`) and the named
arrays of :attr:`RecurrentLayer.params` (``W_r``, ``U_c``, ``b_hc``, …) are views into
it. An optimiser can therefore update the whole layer with one vector operation, and
a user can edit a named block in place (``layer.params["b_u"][:] = 2.0``). Gradients
mirror this in ``flat_grads``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .catalogue import get_variant
from .kernels.plan import KernelPlan, make_plan
from .spec import Variant
from .vocabulary import BACKENDS, DTYPES, normalise_dtype, positive_int

__all__ = ["BACKENDS", "DTYPES", "RecurrentLayer", "State", "normalise_dtype"]

State = Any  # np.ndarray (h) or tuple[np.ndarray, np.ndarray] (h, c)


class RecurrentLayer:
    """One recurrent layer of a variant, over whole sequences.

    Parameters
    ----------
    variant:
        A built-in name (``"gru"``), a path to a spec file, or a :class:`Variant`.
    input_size, hidden_size:
        ``I`` and ``H``.
    seed:
        Seeds the initialisation: PyTorch's default ``U(-1/√H, 1/√H)`` for every weight
        and bias, then the LSTM forget-gate bias set to the spec's ``forget_bias``.
    dtype:
        ``"float32"`` or ``"float64"`` (or ``np.float32``, ``np.float64``); inputs must
        have the same dtype.
    backend:
        ``"cpu"`` (Numba) or ``"cuda"`` (numba.cuda; needs a GPU and ``numba-cuda``).
    """

    def __init__(
        self,
        variant: str | Variant,
        input_size: int,
        hidden_size: int,
        *,
        seed: int = 0,
        dtype: str = "float32",
        backend: str = "cpu",
    ) -> None:
        self.variant: Variant = get_variant(variant)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        dtype = normalise_dtype(dtype)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.dtype = dtype
        self.backend = backend
        self.plan: KernelPlan = make_plan(self.variant)
        I, H, p = self.input_size, self.hidden_size, self.plan
        sizes = (p.nx * H * I, p.nh * H * H, p.nb * H)
        self.flat_params = np.zeros(sum(sizes), dtype=dtype)
        self.flat_grads = np.zeros_like(self.flat_params)
        self.W, self.U, self.b = self._packed(self.flat_params)
        self.params: dict[str, np.ndarray] = self._named(self.W, self.U, self.b)
        self._dW, self._dU, self._db = self._packed(self.flat_grads)
        self.grads: dict[str, np.ndarray] = self._named(self._dW, self._dU, self._db)
        self.reset_parameters(seed)
        self._impl = _make_impl(self)
        self._saved: tuple | None = None

    # ----------------------------------------------------------------- layout
    def _packed(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        I, H, p = self.input_size, self.hidden_size, self.plan
        n_w, n_u = p.nx * H * I, p.nh * H * H
        W = flat[:n_w].reshape(p.nx * H, I)
        U = flat[n_w : n_w + n_u].reshape(p.nh * H, H)
        b = flat[n_w + n_u :]
        return W, U, b

    def _named(self, W: np.ndarray, U: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        H, p = self.hidden_size, self.plan
        named: dict[str, np.ndarray] = {}
        for blk, k in p.x_off.items():
            named[f"W_{blk}"] = W[k * H : (k + 1) * H]
        for blk, k in p.h_off.items():
            named[f"U_{blk}"] = U[k * H : (k + 1) * H]
        for name, k in p.b_off.items():
            named[name] = b[k * H : (k + 1) * H]
        return named

    @property
    def param_count(self) -> int:
        return int(self.flat_params.size)

    def reset_parameters(self, seed: int = 0) -> None:
        """PyTorch's default initialisation, and the spec's LSTM forget bias."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.flat_params[:] = rng.uniform(-bound, bound, self.flat_params.size)
        if self.variant.family == "lstm" and "b_f" in self.params:
            self.params["b_f"][:] = self.variant.forget_bias
        if self.backend != "cpu" and getattr(self, "_impl", None) is not None:
            self._impl.params_changed()

    def params_changed(self) -> None:
        """Call after writing ``params`` (or ``flat_params``) in place.

        A no-op on the CPU, whose kernels read the host buffers; a CUDA layer re-uploads
        its device copy of the parameters.
        """
        self._impl.params_changed()

    # ------------------------------------------------------------- validation
    def _check_array(self, name: str, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        if a.dtype != self.dtype:
            raise ValueError(
                f"{name} has dtype {a.dtype} but the layer is {self.dtype};"
                f" convert with .astype(np.{self.dtype})"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return np.ascontiguousarray(a)

    def _state_array(self, name: str, state: State, B: int) -> np.ndarray:
        """Pack a user state (``h`` or ``(h, c)``, or None for zeros) as (S, B, H)."""
        S, H = len(self.variant.state_names), self.hidden_size
        if state is None:
            return np.zeros((S, B, H), dtype=self.dtype)
        parts = state if S == 2 else (state,)
        if S == 2 and not (isinstance(state, tuple | list) and len(state) == 2):
            raise ValueError(f"{name} of an LSTM-family layer must be a tuple (h, c)")
        return np.stack(
            [
                self._check_array(f"{name}[{k}]", s, (B, H))
                for k, s in zip(self.variant.state_names, parts, strict=True)
            ]
        )

    def _unpack_state(self, s: np.ndarray) -> State:
        return (s[0], s[1]) if s.shape[0] == 2 else s[0]

    # ------------------------------------------------------------------- run
    def forward(self, x: np.ndarray, state: State = None, *, keep: bool = True,
                copy: bool = True):
        """Run the layer over a sequence.

        ``x`` is (T, B, I) in the layer's dtype; ``state`` the initial ``h`` (B, H), or
        ``(h, c)`` for the LSTM family, or None for zeros. Returns ``(y, last_state)``
        with ``y`` (T, B, H) every step's ``h``. With ``keep=True`` (default) the
        activations are kept for :meth:`backward`; ``keep=False`` is inference only.

        :meth:`backward` reads ``x`` and ``y`` again, so by default the layer keeps its
        own copies and the caller may change either in place. ``copy=False`` skips the
        copies (one pass over ``x`` and ``y``); the caller then promises to leave both
        unchanged until :meth:`backward` (the :class:`~gruablate.Model` does).
        """
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            got = f"shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"x must be a 3-D array (T, B, I), got {got}")
        T, B, _ = x.shape
        if T < 1 or B < 1:
            raise ValueError(f"x must have at least one step and one batch row, got {x.shape}")
        given = x
        x = self._check_array("x", x, (T, B, self.input_size))
        s0 = self._state_array("state", state, B)
        y, sT, saved = self._impl.forward(x, s0, keep)
        if not keep:
            self._saved = None
            return y, self._unpack_state(sT)
        if copy and np.may_share_memory(x, given):  # bounds only: cheap, never misses
            x = x.copy()  # the caller may overwrite its x before backward
        self._saved = (x, s0, y, *saved)
        return (y.copy() if copy else y), self._unpack_state(sT)

    def backward(self, dy: np.ndarray, dlast_state: State = None):
        """Backpropagate through time after a :meth:`forward` with ``keep=True``.

        ``dy`` (T, B, H) is the loss gradient on the outputs, ``dlast_state`` on the
        last state (None for zeros). Returns ``(dx, dstate0, grads)``; ``grads`` has the
        keys of :attr:`params` and views :attr:`flat_grads`, which the next call
        overwrites.
        """
        if self._saved is None:
            raise ValueError("backward needs a preceding forward(x) with keep=True")
        x, s0, y = self._saved[:3]
        dy = self._check_array("dy", dy, y.shape)
        dsT = self._state_array("dlast_state", dlast_state, y.shape[1])
        dx, ds0 = self._impl.backward(self._saved, dy, dsT)
        return dx, self._unpack_state(ds0), self.grads

    def to(self, backend: str) -> RecurrentLayer:
        """A copy of this layer on another backend (same parameters)."""
        other = RecurrentLayer(
            self.variant, self.input_size, self.hidden_size, dtype=self.dtype, backend=backend
        )
        other.flat_params[:] = self.flat_params
        if backend != "cpu":
            other._impl.params_changed()
        return other

    def __repr__(self) -> str:
        return (
            f"RecurrentLayer({self.variant.name!r}, input_size={self.input_size},"
            f" hidden_size={self.hidden_size}, dtype={self.dtype!r}, backend={self.backend!r})"
        )


class _CpuImpl:
    """Runs the Numba CPU kernels on the layer's packed arrays."""

    def __init__(self, layer: RecurrentLayer) -> None:
        from .kernels import cpu

        self.layer = layer
        self.k = cpu.kernels(layer.variant, layer.dtype)

    def forward(self, x: np.ndarray, s0: np.ndarray, keep: bool):
        L = self.layer
        T, B, _ = x.shape
        H, p = L.hidden_size, L.plan
        y = np.empty((T, B, H), dtype=L.dtype)
        sT = np.empty_like(s0)
        if not keep:
            self.k.forward_infer(x, s0, L.W, L.U, L.b, y, sT)
            return y, sT, ()
        acts = np.empty((T, B, p.na * H), dtype=L.dtype)
        aux = np.empty((T, B, H) if p.uses_aux else (T, 1, 1), dtype=L.dtype)
        self.k.forward_train(x, s0, L.W, L.U, L.b, y, sT, acts, aux)
        return y, sT, (acts, aux)

    def backward(self, saved: tuple, dy: np.ndarray, dsT: np.ndarray):
        L = self.layer
        x, s0, y, acts, aux = saved
        dx = np.empty_like(x)
        ds0 = np.empty_like(s0)
        self.k.backward(x, s0, L.W, L.U, L.b, y, acts, aux, dy, dsT, dx, ds0, L._dW, L._dU, L._db)
        return dx, ds0

    def params_changed(self) -> None:  # parameters are read in place on the CPU
        pass


def _make_impl(layer: RecurrentLayer):
    if layer.backend == "cpu":
        return _CpuImpl(layer)
    from .kernels.cuda import CudaImpl  # imported lazily: numba-cuda is optional

    return CudaImpl(layer)
