"""Any gruablate cell inside a PyTorch model: :class:`Recurrent`, an ``nn.Module``.

``Recurrent("mgu", 32, 64, num_layers=2, bidirectional=True)`` is shaped like
``nn.GRU`` (``forward(x, state=None, lengths=None) -> (y, last_state)``,
``batch_first``, ``dropout`` between layers, ``PackedSequence`` input), its
``nn.Parameter``s carry the spec's names (``cells.0.W_f``, ``cells.0.U_c``, and
``cells_reverse.0.W_f`` for the reverse direction), and ``torch.optim`` trains it like
any module. Each layer and direction is a ``torch.autograd.Function`` around the same
Numba CPU kernels :class:`~gruablate.RecurrentLayer` runs, forward and backward through
time, on CPU tensors of float32 or float64; the inputs and outputs cross as NumPy views
of the tensors (no copies), and the activations a backward pass needs stay with the
autograd graph, so several forward passes may precede one ``backward()``.

Sequence lengths (``lengths=``, or a ``PackedSequence``): a row's states stop changing
after its last step and its outputs there are zero, as ``nn.GRU`` gives on packed input;
the kernels skip those steps. The reverse direction reads each row's own steps
backwards (its padding stays at the end), as PyTorch's bidirectional layers do.

Zoneout (``zoneout=p``) zones out ``h``: in training each unit keeps its previous value
with probability ``p`` at each step, at evaluation ``h`` is the expectation; the kernels
of the cell printed with zoneout take the mask as an input.

What this bridge does not do yet (the PyTorch-bridge issue lists it): CUDA tensors.

torch is an optional dependency (the ``torch`` extra), imported only here. Import
``torch`` before running any gruablate kernel: PyTorch's wheel ships an OpenMP library
of the same name as the one Numba's thread pool loads, and a PyTorch loaded after that
pool started shares it; its own ``nn.GRU`` then ran up to 50x slower (see
``gruablate/backends/cpu/threads.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
except ModuleNotFoundError:  # pragma: no cover - the extra is not installed
    raise ModuleNotFoundError(
        "gruablate.torch needs PyTorch: pip install torch (the 'torch' extra)") from None

from .backends.state import check_array, check_lengths, reverse_index
from .cells.catalogue import get_variant
from .cells.spec import Variant
from .layer import RecurrentLayer
from .vocabulary import positive_int

__all__ = ["Recurrent"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _load_params(cell: _Cell, params) -> None:
    """Put the parameters' current values into the engine's buffers, which the kernels
    read: nothing to do for a parameter that is a view of its buffer (as made, and as
    an optimiser's in-place steps keep it); a copy for one whose storage was replaced
    (``p.data = ...``, ``load_state_dict(assign=True)``)."""
    for mine, address, p in zip(cell.views, cell.addresses, params, strict=True):
        if p.data_ptr() != address:
            mine[...] = p.detach().numpy()


def _host_input(engine: RecurrentLayer, x: torch.Tensor) -> np.ndarray:
    """``x`` as the kernels take it: a NumPy view of the tensor, checked."""
    return check_array("x", x.detach().numpy(), tuple(x.shape), engine.dtype)


class _LayerFunction(torch.autograd.Function):
    """One layer over a whole sequence: the CPU kernels' forward and backward."""

    @staticmethod
    def forward(ctx, cell: _Cell, lengths: np.ndarray | None, mask: np.ndarray | None,
                x, s0, *params):
        engine = cell.engine
        # An output nobody reads (usually the last state) gets no zero tensor from
        # autograd in backward: None, which the kernels' call below fills.
        ctx.set_materialize_grads(False)
        _load_params(cell, params)
        x_np = _host_input(engine, x)
        s0_np = s0.detach().numpy()
        impl, more = _kernels(engine, mask)
        y, sT, saved = impl.forward(x_np, s0_np, True, lengths, *more)
        y_t, sT_t = torch.from_numpy(y), torch.from_numpy(sT)
        ctx.cell, ctx.impl = cell, impl
        ctx.kernel_saved = (x_np, s0_np, y, *saved)
        # Saved through autograd so that an in-place change to the input, the output
        # or a parameter before backward() is an error, not a wrong gradient.
        ctx.save_for_backward(x, y_t, *params)
        return y_t, sT_t

    @staticmethod
    def backward(ctx, dy, dsT):
        ctx.saved_tensors  # noqa: B018 - raises if a saved tensor was changed in place
        cell = ctx.cell
        dy_np = (np.zeros_like(ctx.kernel_saved[2]) if dy is None
                 else np.ascontiguousarray(dy.detach().numpy()))
        dsT_np = (np.zeros_like(ctx.kernel_saved[1]) if dsT is None
                  else np.ascontiguousarray(dsT.detach().numpy()))
        # The kernels read the parameters from the engine's buffers: put this call's
        # values back (another forward may have run in between).
        _load_params(cell, ctx.saved_tensors[2:])
        dx, ds0 = ctx.impl.backward(ctx.kernel_saved, dy_np, dsT_np)
        # One copy of the whole gradient buffer (the next backward overwrites it), handed
        # out as views: autograd may keep them as the parameters' .grad.
        flat = torch.from_numpy(cell.engine.flat_grads.copy())
        grads = [flat[a:b].view(shape) for a, b, shape in cell.grad_slices]
        return (None, None, None, torch.from_numpy(dx), torch.from_numpy(ds0), *grads)


def _kernels(engine: RecurrentLayer, mask: np.ndarray | None):
    """The implementation to run (the zoneout cell's when there is a mask) and the
    arguments after the lengths it takes."""
    return engine.impl_for(mask), (() if mask is None else (mask,))


class _Cell(nn.Module):
    """One layer's parameters in one direction, named as the spec names them."""

    def __init__(self, engine: RecurrentLayer, dtype: torch.dtype) -> None:
        super().__init__()
        self.engine = engine
        self.names = tuple(engine.params)
        #: the engine's parameter views (what the kernels read) and their addresses, and
        #: where each parameter's gradient lies in the flat gradient buffer
        self.views = tuple(engine.params[n] for n in self.names)
        self.addresses = tuple(v.ctypes.data for v in self.views)
        base, size = engine.flat_grads.ctypes.data, engine.flat_grads.itemsize
        self.grad_slices = []
        for n in self.names:
            g = engine.grads[n]
            start = (g.ctypes.data - base) // size
            self.grad_slices.append((start, start + g.size, g.shape))
        for name in self.names:
            # A view of the engine's buffer (the same dtype): the kernels read the
            # parameters where the optimiser writes them, no copy per call.
            value = torch.from_numpy(engine.params[name])
            assert value.dtype == dtype
            self.register_parameter(name, nn.Parameter(value))

    def forward(self, x, s0, lengths: np.ndarray | None, mask: np.ndarray | None = None):
        params = [getattr(self, n) for n in self.names]
        if torch.is_grad_enabled() and (x.requires_grad or s0.requires_grad
                                        or any(p.requires_grad for p in params)):
            return _LayerFunction.apply(self, lengths, mask, x, s0, *params)
        # Nothing to differentiate (torch.no_grad(), inference_mode, frozen weights):
        # the inference kernels, which keep no activations.
        _load_params(self, params)
        impl, more = _kernels(self.engine, mask)
        y, sT, _ = impl.forward(_host_input(self.engine, x), s0.detach().numpy(), False,
                                lengths, *more)
        return torch.from_numpy(y), torch.from_numpy(sT)


def _gather_steps(a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``a[index[t, b], b]`` for (T, B, F) ``a``: differentiable, a copy."""
    return torch.gather(a, 0, index.unsqueeze(-1).expand(-1, -1, a.shape[2]))


def _repack(y: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """The padded (T, B, F) ``y`` as a ``PackedSequence`` laid out as ``like``."""
    ys = y if like.sorted_indices is None else y.index_select(1, like.sorted_indices)
    data = torch.cat([ys[t, :n] for t, n in enumerate(like.batch_sizes.tolist())])
    return PackedSequence(data, like.batch_sizes, like.sorted_indices,
                          like.unsorted_indices)


class Recurrent(nn.Module):
    """A stack of ``num_layers`` recurrent layers of any gruablate variant.

    Parameters
    ----------
    variant:
        A built-in name, a spec file or a :class:`~gruablate.Variant`.
    input_size, hidden_size, num_layers:
        As for ``nn.GRU``.
    bidirectional:
        Each layer also runs the sequence backwards with parameters of its own
        (``cells_reverse``); the two directions' outputs are concatenated, forward
        first, so the next layer and ``y`` have ``2 * hidden_size`` features.
    batch_first:
        Inputs and outputs as (B, T, features) instead of (T, B, features).
    dropout:
        Dropout on the outputs of every layer but the last, in training mode (as
        ``nn.GRU``; drawn from torch's generator).
    zoneout:
        Zoneout on ``h`` (Krueger et al. 2016, as haste does): in training each unit
        keeps its previous ``h`` with this probability at each step (masks drawn from
        torch's generator); at evaluation ``h' = p·h + (1 − p)·h'``, the expectation.
    dtype:
        ``torch.float32`` (default) or ``torch.float64``.
    seed:
        Seeds the initialisation (PyTorch's default, ``U(-1/√H, 1/√H)``, and the spec's
        LSTM forget bias); by default drawn from ``torch``'s generator, so
        ``torch.manual_seed`` makes it reproducible.

    ``forward(x, state=None, lengths=None)`` returns ``(y, last_state)``: ``y`` every
    step's top-layer output (a ``PackedSequence`` when ``x`` is one); the state is ``h``
    of shape (num_layers · directions, B, H), or ``(h, c)`` for the LSTM family, as
    ``nn.GRU`` and ``nn.LSTM`` give them (layer ``k``'s reverse direction at index
    ``2k + 1``). ``lengths`` (B integers, at most T) marks each row's real steps of a
    padded ``x``; past them a row's outputs are zero and its states stay as they were.
    """

    def __init__(self, variant: str | Variant, input_size: int, hidden_size: int,
                 num_layers: int = 1, *, bidirectional: bool = False,
                 batch_first: bool = False, dropout: float = 0.0, zoneout: float = 0.0,
                 dtype: torch.dtype = torch.float32, seed: int | None = None) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        for what, value in (("dropout", dropout), ("zoneout", zoneout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0.0 <= value < 1.0):
                raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
        self.variant = get_variant(variant)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.zoneout = float(zoneout)
        self.dtype = dtype
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        D = self.directions
        seeds = iter(np.random.SeedSequence(seed).spawn(self.num_layers * D))

        def cell(k: int) -> _Cell:
            size = input_size if k == 0 else D * hidden_size
            engine = RecurrentLayer(self.variant, size, hidden_size,
                                    seed=int(next(seeds).generate_state(1)[0]),
                                    dtype=_DTYPES[dtype])
            return _Cell(engine, dtype)

        cells = [[cell(k) for _ in range(D)] for k in range(self.num_layers)]
        self.cells = nn.ModuleList(c[0] for c in cells)
        if self.bidirectional:
            self.cells_reverse = nn.ModuleList(c[1] for c in cells)

    @property
    def directions(self) -> int:
        """2 for a bidirectional module, else 1."""
        return 2 if self.bidirectional else 1

    def _cell(self, layer: int, direction: int) -> _Cell:
        return (self.cells if direction == 0 else self.cells_reverse)[layer]

    @classmethod
    def from_torch(cls, module: nn.GRU | nn.LSTM) -> Recurrent:
        """A :class:`Recurrent` computing exactly what an ``nn.GRU`` (→
        ``gru_reset_after``) or ``nn.LSTM`` (→ ``lstm``) of any depth, either direction,
        computes, with its weights (mapped as :func:`gruablate.interop.from_torch` maps
        one layer and direction) and its ``batch_first`` and ``dropout``."""
        from .interop import stack_from_torch

        stack = stack_from_torch(module)
        out = cls(stack[0][0].variant, module.input_size, module.hidden_size,
                  module.num_layers, bidirectional=module.bidirectional,
                  batch_first=module.batch_first, dropout=module.dropout,
                  dtype=module.weight_ih_l0.dtype)
        with torch.no_grad():
            for k, directions in enumerate(stack):
                for d, layer in enumerate(directions):
                    cell = out._cell(k, d)
                    for name in cell.names:
                        getattr(cell, name).copy_(torch.from_numpy(layer.params[name]))
        return out

    @property
    def _several_states(self) -> bool:
        """``(h, c)`` for the LSTM family, or a tuple of all the states of an equations
        cell with more (``variant.state_names`` order); else the state is ``h``."""
        return len(self.variant.state_names) > 1

    def _initial(self, state: Any, B: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Each layer and direction's (S, B, H) initial state from the user's ``h`` or
        ``(h, c, ...)``."""
        N, H, S = self.num_layers * self.directions, self.hidden_size, \
            len(self.variant.state_names)
        if state is None:
            return [like.new_zeros((S, B, H)) for _ in range(N)]
        parts = state if self._several_states else (state,)
        if self._several_states and not (isinstance(state, tuple | list) and len(state) == S):
            raise ValueError(f"the state of this Recurrent is a tuple"
                             f" ({', '.join(self.variant.state_names)})")
        for name, p in zip(self.variant.state_names, parts, strict=True):
            if not isinstance(p, torch.Tensor) or tuple(p.shape) != (N, B, H):
                got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"state {name} must be a tensor of shape {(N, B, H)},"
                                 f" got {got}")
            if p.dtype != self.dtype or p.device.type != "cpu":
                raise ValueError(f"state {name} must be a CPU tensor of {self.dtype}")
        return [torch.stack([p[k] for p in parts]) for k in range(N)]

    def _input(self, x: Any, lengths: Any) -> tuple[torch.Tensor, np.ndarray | None,
                                                   PackedSequence | None]:
        """``(h, lengths, packed)``: the (T, B, I) input, the checked lengths (None: every
        row runs all T steps) and the ``PackedSequence`` it came from, if any."""
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("give lengths or a PackedSequence, not both")
            x, lengths = pad_packed_sequence(packed)
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 3-D tensor, got {got}")
        if x.device.type != "cpu":
            raise ValueError("gruablate.torch.Recurrent runs on CPU tensors only (for now)")
        if x.dtype != self.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the module is {self.dtype}")
        h = x.transpose(0, 1) if self.batch_first and packed is None else x
        if h.shape[0] < 1 or h.shape[1] < 1 or h.shape[2] != self.input_size:
            raise ValueError(f"x must be (T, B, {self.input_size}) with T, B >= 1"
                             f"{' (batch_first: B, T, I)' if self.batch_first else ''},"
                             f" got {tuple(x.shape)}")
        if lengths is not None:
            if isinstance(lengths, torch.Tensor):
                lengths = lengths.detach().cpu().numpy()
            lengths = check_lengths(lengths, h.shape[0], h.shape[1])
        return h.contiguous(), lengths, packed

    def forward(self, x: torch.Tensor | PackedSequence, state: Any = None,
                lengths: Any = None) -> tuple[torch.Tensor | PackedSequence, Any]:
        h, lens, packed = self._input(x, lengths)
        T, B = h.shape[0], h.shape[1]
        D = self.directions
        backwards = None
        if self.bidirectional:
            full = np.full(B, T, dtype=np.int64) if lens is None else lens
            backwards = torch.from_numpy(reverse_index(T, full))
        initial = self._initial(state, B, h)
        last = []
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                s0 = initial[k * D + d].contiguous()
                mask = self._zoneout_mask(T, B)
                if d == 0:
                    y, sT = self._cell(k, 0)(h, s0, lens, mask)
                else:  # each row's steps backwards, then back in order
                    y, sT = self._cell(k, 1)(_gather_steps(h, backwards), s0, lens, mask)
                    y = _gather_steps(y, backwards)
                outs.append(y)
                last.append(sT)
            h = outs[0] if D == 1 else torch.cat(outs, dim=2)
            if self.dropout and self.training and k < self.num_layers - 1:
                h = nn.functional.dropout(h, self.dropout, training=True)
        if packed is not None:
            y = _repack(h, packed)
        else:
            y = h.transpose(0, 1) if self.batch_first else h
        stacked = torch.stack(last, dim=1)  # (S, L·D, B, H)
        return y, (tuple(stacked) if self._several_states else stacked[0])

    def _zoneout_mask(self, T: int, B: int) -> np.ndarray | None:
        """One layer and direction's zoneout weights (T, B, H): Bernoulli draws from
        torch's generator in training, the probability itself at evaluation."""
        if not self.zoneout:
            return None
        shape = (T, B, self.hidden_size)
        if self.training:
            return torch.bernoulli(torch.full(shape, self.zoneout, dtype=self.dtype)).numpy()
        return np.full(shape, self.zoneout, dtype=_DTYPES[self.dtype])

    def extra_repr(self) -> str:
        return (f"{self.variant.name!r}, {self.input_size}, {self.hidden_size},"
                f" num_layers={self.num_layers}, bidirectional={self.bidirectional},"
                f" batch_first={self.batch_first}, dropout={self.dropout},"
                f" zoneout={self.zoneout},"
                f" dtype={self.dtype}")
