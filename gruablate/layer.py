"""`RecurrentLayer`: one layer of any variant — parameters, initialisation, dispatch.

The parameters live in one flat buffer (``flat_params``); the packed matrices the
kernels take (``W``, ``U``, ``b``, see :mod:`gruablate.cells.plan`) and the named
arrays of :attr:`RecurrentLayer.params` (``W_r``, ``U_c``, ``b_hc``, …) are views into
it. An optimiser can therefore update the whole layer with one vector operation, and
a user can edit a named block in place (``layer.params["b_u"][:] = 2.0``). Gradients
mirror this in ``flat_grads``.
"""

from __future__ import annotations

import math

import numpy as np

from .backends import BACKENDS, Backend, LayerImpl, get_backend
from .backends.state import (
    State,
    check_array,
    check_lengths,
    pack_state,
    reverse_index,
    unpack_state,
)
from .cells.catalogue import get_variant
from .cells.plan import KernelPlan, make_plan
from .cells.spec import Variant
from .vocabulary import DTYPES, normalise_dtype, positive_int

__all__ = ["BACKENDS", "DTYPES", "RecurrentLayer", "State", "normalise_dtype"]


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
        ``"cpu"`` (Numba) or ``"cuda"`` (numba.cuda; needs a GPU and ``numba-cuda``), or
        any backend registered with :func:`gruablate.backends.register` (by name or as
        the object). :attr:`backend` is its name, :attr:`impl` its implementation.
    """

    def __init__(
        self,
        variant: str | Variant,
        input_size: int,
        hidden_size: int,
        *,
        seed: int = 0,
        dtype: str = "float32",
        backend: str | Backend = "cpu",
    ) -> None:
        self.variant: Variant = get_variant(variant)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.dtype = normalise_dtype(dtype)
        self.variant.check_sizes(self.input_size, self.hidden_size)
        backend_ = get_backend(backend)
        backend_.require()  # the reason, before any work, when this machine cannot
        backend_.require_variant(self.variant)  # ... or the backend has no such kernels
        self.backend: str = backend_.name
        self.plan: KernelPlan = make_plan(self.variant)
        I, H, p = self.input_size, self.hidden_size, self.plan
        self.flat_params = np.zeros(p.param_count(I, H), dtype=self.dtype)
        self.flat_grads = np.zeros_like(self.flat_params)
        self.W, self.U, self.b = p.split(self.flat_params, I, H)
        self.params: dict[str, np.ndarray] = p.named(self.W, self.U, self.b, H)
        self.grads: dict[str, np.ndarray] = p.named(*p.split(self.flat_grads, I, H), H)
        self._init_params(seed)
        #: the backend's implementation of this layer (see gruablate.backends.base)
        self.impl: LayerImpl = backend_.layer(p, self.dtype, I, H, self.flat_params,
                                              self.flat_grads)
        self._zoneout_impl: LayerImpl | None = None
        self._saved: tuple | None = None
        self._saved_impl: LayerImpl = self.impl
        self._steps: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def zoneout_impl(self) -> LayerImpl:
        """The backend's implementation of this layer's cell with zoneout on ``h``
        (:func:`gruablate.cells.ir.build`): made on first use, on the same parameter and
        gradient buffers."""
        if self._zoneout_impl is None:
            self._zoneout_impl = get_backend(self.backend).layer(
                make_plan(self.variant, zoneout=True), self.dtype, self.input_size,
                self.hidden_size, self.flat_params, self.flat_grads)
        return self._zoneout_impl

    def impl_for(self, zoneout: np.ndarray | None) -> LayerImpl:
        """The implementation that runs with a zoneout mask (None: the plain one)."""
        return self.impl if zoneout is None else self.zoneout_impl

    @property
    def param_count(self) -> int:
        return int(self.flat_params.size)

    def reset_parameters(self, seed: int = 0) -> None:
        """PyTorch's default initialisation, and the spec's LSTM forget bias."""
        self._init_params(seed)
        self.params_changed()

    def _init_params(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.flat_params[:] = rng.uniform(-bound, bound, self.flat_params.size)
        for name, value in self.variant.initial_values.items():
            self.params[name][:] = value

    def params_changed(self) -> None:
        """Call after writing ``params`` (or ``flat_params``) in place.

        A no-op on the CPU, whose kernels read the host buffers; a CUDA layer re-uploads
        its device copy of the parameters.
        """
        self.impl.params_changed()
        if self._zoneout_impl is not None:
            self._zoneout_impl.params_changed()

    # ------------------------------------------------------------- validation
    def _check_array(self, name: str, a: object, shape: tuple[int, ...]) -> np.ndarray:
        return check_array(name, a, shape, self.dtype)

    def _state_array(self, name: str, state: State, B: int) -> np.ndarray:
        return pack_state(name, state, self.variant.state_names, B, self.hidden_size,
                          self.dtype)

    # ------------------------------------------------------------------- run
    def forward(self, x: np.ndarray, state: State = None, *, lengths=None,
                reverse: bool = False, zoneout: np.ndarray | None = None, keep: bool = True,
                copy: bool = True):
        """Run the layer over a sequence.

        ``x`` is (T, B, I) in the layer's dtype; ``state`` the initial ``h`` (B, H), or
        ``(h, c)`` for the LSTM family, or None for zeros. Returns ``(y, last_state)``
        with ``y`` (T, B, H) every step's ``h``. With ``keep=True`` (default) the
        activations are kept for :meth:`backward`; ``keep=False`` is inference only.

        ``lengths`` (B integers in ``[0, T]``) marks each row's real steps of a padded
        ``x``: past row ``b``'s first ``lengths[b]`` steps its outputs are zero and its
        states do not change, so ``last_state`` is each row's state after its own last
        step (as ``nn.GRU`` gives on a packed sequence). ``reverse=True`` runs each
        row's real steps last to first (its padding stays at the end) and returns the
        outputs in the input's order: the reverse direction of a bidirectional layer.

        ``zoneout`` (T, B, H) in ``[0, 1]``, in the layer's dtype, zones out ``h``
        (Krueger et al. 2016, as haste does): each unit's new ``h`` is ``m ⊙ h + (1 − m)
        ⊙ h'``, ``m`` the mask's value at that step (by the input's step order), so a
        Bernoulli draw of probability ``p`` in training and ``p`` itself at evaluation.

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
        lens = None if lengths is None else check_lengths(lengths, T, B)
        mask = None
        if zoneout is not None:
            mask = self._check_array("zoneout", zoneout, (T, B, self.hidden_size))
            if ((mask < 0) | (mask > 1)).any():
                raise ValueError("zoneout weights must be in [0, 1]")
            if copy and np.may_share_memory(mask, zoneout):
                mask = mask.copy()  # backward reads it again
        self._steps = None  # the step order of a reversed run (its own inverse)
        if reverse:
            self._steps = (reverse_index(T, np.full(B, T) if lens is None else lens),
                           np.arange(B))
            x = x[self._steps]  # a copy: the caller's x is not read again
            mask = None if mask is None else mask[self._steps]
        impl = self.impl_for(mask)
        # A backend without lengths or zoneout is asked for neither.
        more = (lens, mask) if mask is not None else () if lens is None else (lens,)
        y, sT, saved = impl.forward(x, s0, keep, *more)
        self._saved_impl = impl
        out = y if self._steps is None else y[self._steps]
        if not keep:
            self._saved = None
            return out, unpack_state(sT)
        if copy and self._steps is None and np.may_share_memory(x, given):
            x = x.copy()  # the caller may overwrite its x before backward (bounds only)
        self._saved = (x, s0, y, *saved)
        return (out.copy() if copy and self._steps is None else out), unpack_state(sT)

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
        if self._steps is not None:
            dy = dy[self._steps]
        dx, ds0 = self._saved_impl.backward(self._saved, dy, dsT)
        if self._steps is not None:
            dx = dx[self._steps]
        return dx, unpack_state(ds0), self.grads

    def to(self, backend: str | Backend) -> RecurrentLayer:
        """A copy of this layer on another backend (same parameters)."""
        other = RecurrentLayer(
            self.variant, self.input_size, self.hidden_size, dtype=self.dtype, backend=backend
        )
        other.flat_params[:] = self.flat_params
        other.params_changed()
        return other

    def __repr__(self) -> str:
        return (
            f"RecurrentLayer({self.variant.name!r}, input_size={self.input_size},"
            f" hidden_size={self.hidden_size}, dtype={self.dtype!r}, backend={self.backend!r})"
        )
