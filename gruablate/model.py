"""A sequence model: encoding → stacked recurrent layers → readout → loss.

The recurrent work runs on the same :class:`~gruablate.RecurrentLayer` kernels users
import. The model holds the parameters and the encoding; its backend's *runner* runs
the steps: on the host (:class:`~gruablate.backends.host.HostRunner`, a few NumPy lines
around the layers) or, for a device backend, on the device.

- **Encoding.** Symbol inputs (integer arrays, ``tokens=True``) are one-hot encoded;
  real inputs go to the first layer as they are. The first layer's input weights
  ``W_*`` then *are* the embedding (or the linear input map): a separate embedding
  matrix in front of them would be a second linear map with nothing between the two.
- **Readout.** A dense layer ``z = V h + c`` on the top layer's output, at every step
  (``readout="every"``) or at the last step only (``"last"``).
- **Bidirectional layers** (``bidirectional=True``, off by default), as ``nn.GRU``'s:
  each layer is two recurrent layers with their own parameters, one running forward in
  time and one backward (:meth:`~gruablate.RecurrentLayer.forward` with
  ``reverse=True``) over the same input; their outputs are concatenated along the
  features, forward first, so the next layer and the readout read ``2·hidden``. With
  ``readout="last"`` the readout reads each direction's own last step: the forward
  direction's output at step ``T − 1`` and the reverse direction's at step 0, where it
  has read the whole sequence (the ``h_n`` of both directions that a bidirectional
  ``nn.GRU`` classifier reads); with ``"every"`` the concatenated output at each step,
  which has seen the steps after it.
- **Sequence lengths** (``lengths=``, optional): a padded batch whose row ``b`` has
  ``lengths[b]`` real steps (from 1 to ``T``), as ``nn.GRU`` reads a packed sequence.
  Every layer stops updating a row's state after its last step and outputs zeros
  there (:meth:`~gruablate.RecurrentLayer.forward` with ``lengths``); a reverse
  direction reads each row's real steps last to first. The loss counts only the real
  steps (``readout="every"``: the padding's targets are ignored), and a last-step
  readout reads each row's own last step: the forward direction's output at step
  ``lengths[b] − 1``, the reverse direction's at step 0. They run where the model
  runner has them (``"lengths"`` in ``runner_features``: the host step and the CUDA
  runner); elsewhere lengths are a ``ValueError`` before any work.
- **Loss**, averaged over the predicted positions:

  ``"ce"``  softmax cross-entropy, targets are class indices (T, B) or (B,);
  ``"mse"`` mean squared error over every output, targets (T, B, O) or (B, O);
  ``"bernoulli"`` independent Bernoulli NLL per position (summed over the O outputs:
  piano-roll notes), targets in {0, 1} of shape (T, B, O) or (B, O).

Losses and gradients are computed in float64 (:mod:`gruablate.losses`) and the
gradients cast to the model's dtype, so the reported loss does not depend on the
float32 rounding of a sum.

- **Regularisation** (both off by default). ``dropout=p``: in training, each output of
  every layer but the top one is zeroed with probability ``p`` and the rest scaled by
  ``1/(1 − p)`` before the next layer reads it (as ``nn.GRU``'s ``dropout``).
  ``zoneout=p`` (Krueger et al. 2016, on ``h`` as haste applies it): in training each
  unit of every layer keeps its previous ``h`` with probability ``p`` at each step,
  ``h' = m ⊙ h + (1 − m) ⊙ h̃`` with ``m`` a Bernoulli(``p``) draw; at evaluation
  (:meth:`Model.predict`) ``m = p`` everywhere, the expectation, and no dropout. The
  masks come from :attr:`Model.mask_rng`, a generator of its own seeded from the
  model's seed (:meth:`Model.masks`), one new draw per training :meth:`Model.forward`:
  a run stays deterministic, and the parameters a seed gives do not change. In a
  bidirectional model each direction has its own zoneout mask, and dropout acts on the
  concatenated output (each direction's half drawn on its own).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .backends.state import check_lengths
from .cells.catalogue import get_variant
from .cells.spec import Variant
from .errors import NonFiniteError
from .init import initialise
from .layer import RecurrentLayer
from .losses import bernoulli_nll, log_softmax, loss_and_grad, softmax_nll
from .vocabulary import LOSSES, READOUTS, flag, normalise_dtype, positive_int, probability

__all__ = ["Model", "NonFiniteError", "bernoulli_nll", "log_softmax", "loss_and_grad",
           "softmax_nll"]


class Model:
    """Encoding → ``layers`` stacked recurrent layers → dense readout → loss.

    Parameters
    ----------
    variant:
        Any variant :func:`gruablate.get_variant` accepts; every layer uses it.
    input_size:
        Number of symbols (``tokens=True``) or input features.
    hidden, output_size, layers:
        Width of every recurrent layer, number of outputs, depth.
    tokens:
        Inputs are integer symbols, one-hot encoded.
    readout, loss:
        See the module docstring.
    seed:
        Seeds every parameter; each layer and the readout get their own stream.
    dtype, backend:
        As for :class:`~gruablate.RecurrentLayer`; the backend also runs the steps
        (its :meth:`~gruablate.backends.Backend.model_runner`).
    init, tmax:
        Initialisation scheme of the recurrent layers (see :mod:`gruablate.init`) and the
        characteristic length chrono initialisation needs.
    dropout, zoneout:
        Rates in ``[0, 1)`` (see the module docstring): dropout between stacked layers
        (so it needs ``layers >= 2``), zoneout on every layer's ``h``. Both run on the
        backends whose model runner applies them
        (:meth:`~gruablate.backends.Backend.runner_features`: the CPU's host step and
        the CUDA runner); elsewhere a non-zero rate is a ``ValueError`` before any
        work. At 0 (the default) the model runs exactly as without them.
    bidirectional:
        Each layer runs both ways in time (see the module docstring); ``False`` (the
        default) is the model exactly as before it existed. Like the rates, it runs
        where the model runner has it (``"bidirectional"`` in ``runner_features``: the
        host step and the CUDA runner); elsewhere ``True`` is a ``ValueError`` before
        any work.

    Attributes
    ----------
    layers:
        Every :class:`~gruablate.RecurrentLayer`, bottom first, and within a layer the
        forward direction first: ``layers[k * directions + d]`` is layer ``k``'s
        direction ``d`` (0 forward, 1 reverse). The initial and last states of
        :meth:`forward` and :meth:`predict` are lists in this order, and so are
        :attr:`buffers` (the readout last).
    depth, directions, width:
        The number of stacked layers, 2 for a bidirectional model (else 1), and the
        features of a layer's output (``directions · hidden``: what the next layer and
        the readout read).
    """

    def __init__(
        self,
        variant: str | Variant,
        *,
        input_size: int,
        hidden: int,
        output_size: int,
        layers: int = 1,
        tokens: bool = False,
        readout: str = "every",
        loss: str = "ce",
        seed: int = 0,
        dtype: str = "float32",
        backend: str | Backend = "cpu",
        init: str = "torch",
        tmax: int | None = None,
        dropout: float = 0.0,
        zoneout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        layers = positive_int("layers", layers)
        output_size = positive_int("output_size", output_size)
        self.variant = get_variant(variant)
        backend_ = get_backend(backend)
        #: the rates of dropout between layers and of zoneout on h (0: off), and whether
        #: each layer also runs backwards in time (a second layer per depth)
        self.dropout, self.zoneout, self.bidirectional = check_model_options(
            backend_, layers, dropout, zoneout, bidirectional)
        #: the backend's name (``get_backend(model.backend)`` gives the backend)
        self.backend: str = backend_.name
        self.input_size, self.hidden, self.output_size = input_size, hidden, output_size
        self.tokens, self.readout, self.loss_kind = tokens, readout, loss
        self.dtype = dtype = normalise_dtype(dtype)
        self.depth: int = layers
        self.directions: int = 2 if self.bidirectional else 1
        self.width: int = self.directions * hidden
        # One independent stream per layer, one for the readout and one for the dropout
        # and zoneout masks, all from the seed; then one per reverse-direction layer
        # (children are numbered: adding one after the others leaves their streams, and
        # so the parameters and masks of a seed, as they were).
        seqs = np.random.SeedSequence(seed).spawn(layers + 2 + (
            layers if self.bidirectional else 0))
        #: draws the training masks (None when neither dropout nor zoneout is on)
        self.mask_rng: np.random.Generator | None = (
            np.random.default_rng(seqs[layers + 1]) if self.dropout or self.zoneout
            else None)
        self.layers: list[RecurrentLayer] = []
        for k in range(layers):
            for d in range(self.directions):
                seq = seqs[k] if d == 0 else seqs[layers + 2 + k]
                layer_seed = int(seq.generate_state(1)[0])
                layer = RecurrentLayer(
                    self.variant, input_size if k == 0 else self.width, hidden,
                    seed=layer_seed, dtype=dtype, backend=backend_,
                )
                initialise(layer, init, seed=layer_seed, tmax=tmax)
                self.layers.append(layer)
        # The readout, PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        O, H = output_size, self.width
        self.readout_params = np.zeros(O * H + O, dtype=dtype)
        self.readout_grads = np.zeros_like(self.readout_params)
        bound = 1.0 / math.sqrt(H)
        rng = np.random.default_rng(seqs[layers])
        self.readout_params[:] = rng.uniform(-bound, bound, self.readout_params.size)
        #: the readout ``z = V h + c`` (``V`` is O × width) and its gradients, views of
        #: the flat buffers
        self.V = self.readout_params[: O * H].reshape(O, H)
        self.c = self.readout_params[O * H :]
        self.V_grad = self.readout_grads[: O * H].reshape(O, H)
        self.c_grad = self.readout_grads[O * H :]
        #: what runs the steps (the host step, or a device backend's own)
        self.runner = backend_.model_runner(self)

    # ------------------------------------------------------------ parameters
    @property
    def buffers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every (flat parameter, flat gradient) pair; the optimiser updates these in place."""
        out = [(layer.flat_params, layer.flat_grads) for layer in self.layers]
        out.append((self.readout_params, self.readout_grads))
        return out

    def params_changed(self) -> None:
        """Tell the backend the host parameters changed (after a host optimiser step).

        A no-op on the CPU, where kernels read the host buffers; a device backend
        re-uploads its copies (the readout's too).
        """
        self.runner.params_changed()

    def sync_to_host(self) -> None:
        """Bring the host parameter buffers up to date (after training on a device).

        A device optimiser updates the device's parameters only; call this before
        reading ``buffers`` or a layer's ``params``. A no-op on the CPU.
        """
        self.runner.sync_to_host()

    @property
    def param_count(self) -> int:
        """Trainable scalars of the whole model."""
        return int(sum(p.size for p, _ in self.buffers))

    # --------------------------------------------------------------- running
    def check_tokens(self, x: np.ndarray) -> np.ndarray:
        """``x`` as an integer array (T, B) of symbols in range, or a ValueError."""
        x = np.asarray(x)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"token inputs must be an integer array (T, B), got {x.shape}")
        if x.size and (x.min() < 0 or x.max() >= self.input_size):
            raise ValueError(f"token inputs must lie in [0, {self.input_size}), got"
                             f" [{x.min()}, {x.max()}]")
        return x

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The first layer's input on the host: one-hot symbols, or ``x`` in the dtype."""
        if self.tokens:
            x = self.check_tokens(x)
            out = np.zeros((*x.shape, self.input_size), dtype=self.dtype)
            np.put_along_axis(out, x[..., None], 1.0, axis=-1)
            return out
        return np.ascontiguousarray(x, dtype=self.dtype)

    def masks(self, steps: int, batch: int, *, training: bool
              ) -> list[tuple[np.ndarray | None, np.ndarray | None]] | None:
        """Each layer's ``(zoneout, dropout)`` arrays (T, B, H) in the model's dtype for a
        run over ``steps`` × ``batch``, or None when neither rate is on; one pair per
        entry of :attr:`layers` (so per layer and direction).

        ``zoneout``: the mask ``m`` the layer takes (1 keeps the previous ``h``): in
        training Bernoulli(``zoneout``) draws, at evaluation ``zoneout`` everywhere.
        ``dropout``: what multiplies the layer's output before the next layer reads it,
        0 or ``1/(1 − dropout)``, in training and below the top layer only (in a
        bidirectional model: that direction's half of the concatenated output). A None
        is an array not used. Training draws come from :attr:`mask_rng`, layer by layer
        from the bottom (forward direction first, zoneout before dropout), so each call
        draws new masks.
        """
        if not (self.dropout or self.zoneout):
            return None
        shape, dt = (steps, batch, self.hidden), np.dtype(self.dtype)
        below_top = (self.depth - 1) * self.directions  # the layers dropout follows
        if not training:
            z = np.full(shape, self.zoneout, dtype=dt) if self.zoneout else None
            return [(z, None)] * len(self.layers)
        rng = self.mask_rng
        assert rng is not None
        out: list[tuple[np.ndarray | None, np.ndarray | None]] = []
        for k in range(len(self.layers)):
            z = d = None
            if self.zoneout:
                z = (rng.random(shape) < self.zoneout).astype(dt)
            if self.dropout and k < below_top:
                d = (rng.random(shape) >= self.dropout).astype(dt)
                d *= dt.type(1.0 / (1.0 - self.dropout))
            out.append((z, d))
        return out

    def predict(self, x: np.ndarray, state: list | None = None, lengths: Any = None
                ) -> tuple[np.ndarray, list]:
        """Outputs (logits, or values for MSE) and each layer's last state; keeps nothing.

        Evaluation: no dropout, and zoneout's expectation (``m = zoneout``). ``lengths``
        as for :meth:`forward`; the outputs past a row's length are the readout of zeros
        (a last-step readout reads each row's own last step)."""
        lens = self.check_lengths(x, lengths)
        if lens is None:
            return self.runner.predict(x, state)
        return self.runner.predict(x, state, lengths=lens)

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None = None,
                lengths: Any = None) -> tuple[float, list]:
        """Mean loss on a batch, keeping what :meth:`backward` needs; and the last states.

        ``state`` is a list with one initial state per layer (per layer and direction,
        in the order of :attr:`layers`; None for zeros); pass the returned list back in
        to carry the state over to the next batch. On a device
        backend the states stay on the device and only the loss comes back.

        ``lengths`` (B integers in ``[1, T]``, or None: every row has ``T`` steps) is
        each row's number of real steps in a padded batch (see the module docstring);
        the loss is the mean over the real steps' predictions only, and the last states
        are each row's after its own last step.

        Training: with dropout or zoneout on, each call draws new masks
        (:meth:`masks`), which the following :meth:`backward` goes through.
        """
        lens = self.check_lengths(x, lengths)
        if lens is None:
            return self.runner.forward(x, y, state)
        return self.runner.forward(x, y, state, lengths=lens)

    def check_lengths(self, x: np.ndarray, lengths: Any) -> np.ndarray | None:
        """``lengths`` for a batch ``x`` as int64 (B,) in ``[1, T]``, None for None, or a
        ``ValueError`` naming the problem (also when this model's runner lacks them:
        ``"lengths"`` in :meth:`~gruablate.backends.Backend.runner_features`)."""
        if lengths is None:
            return None
        require_feature(get_backend(self.backend), "lengths")
        shape = np.shape(x)
        if len(shape) < 2:
            raise ValueError(f"inputs must be (T, B, ...) to go with lengths, got {shape}")
        lens = check_lengths(lengths, shape[0], shape[1])
        if len(lens) and lens.min() < 1:
            raise ValueError("lengths must be at least 1: every row needs a real step"
                             " (as for nn.utils.rnn.pack_padded_sequence)")
        return lens

    def backward(self) -> None:
        """Gradients of the last :meth:`forward`'s loss into every buffer's gradient
        (on a device backend: into the device's gradients)."""
        self.runner.backward()


def check_model_options(backend: Backend, layers: int, dropout: Any, zoneout: Any,
                        bidirectional: Any) -> tuple[float, float, bool]:
    """``(dropout, zoneout, bidirectional)`` checked for a model of ``layers`` layers on
    ``backend``, or a ``ValueError`` naming the first bad one: rates in [0, 1), dropout
    only between stacked layers, a bool switch, and only what the backend's model
    runner applies (:meth:`~gruablate.backends.Backend.runner_features`)."""
    dropout, zoneout = probability("dropout", dropout), probability("zoneout", zoneout)
    if dropout and layers == 1:
        raise ValueError("dropout acts between stacked layers; layers=1 has none")
    bidirectional = flag("bidirectional", bidirectional)
    if dropout:
        require_feature(backend, "dropout")
    if zoneout:
        require_feature(backend, "zoneout")
    if bidirectional:
        require_feature(backend, "bidirectional")
    return dropout, zoneout, bidirectional


#: How a refusal names each feature of :meth:`~gruablate.backends.Backend.runner_features`.
FEATURE_NAMES = {"dropout": "dropout", "zoneout": "zoneout",
                 "bidirectional": "bidirectional layers", "lengths": "sequence lengths"}


def require_feature(backend: Backend, feature: str) -> None:
    """A one-line ``ValueError`` unless ``backend``'s model runner applies ``feature``
    (one of :data:`FEATURE_NAMES`)."""
    if feature not in backend.runner_features():
        raise ValueError(f"{FEATURE_NAMES[feature]}: the model runner of backend"
                         f" {backend.name} does not apply it (the cpu and cuda backends'"
                         f" do)")
