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
- **Loss**, averaged over the predicted positions:

  ``"ce"``  softmax cross-entropy, targets are class indices (T, B) or (B,);
  ``"mse"`` mean squared error over every output, targets (T, B, O) or (B, O);
  ``"bernoulli"`` independent Bernoulli NLL per position (summed over the O outputs:
  piano-roll notes), targets in {0, 1} of shape (T, B, O) or (B, O).

Losses and gradients are computed in float64 (:mod:`gruablate.losses`) and the
gradients cast to the model's dtype, so the reported loss does not depend on the
float32 rounding of a sum.
"""

from __future__ import annotations

import math

import numpy as np

from .backends import Backend, get_backend
from .cells.catalogue import get_variant
from .cells.spec import Variant
from .errors import NonFiniteError
from .init import initialise
from .layer import RecurrentLayer
from .losses import bernoulli_nll, log_softmax, loss_and_grad, softmax_nll
from .vocabulary import LOSSES, READOUTS, normalise_dtype, positive_int

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
    ) -> None:
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        layers = positive_int("layers", layers)
        output_size = positive_int("output_size", output_size)
        self.variant = get_variant(variant)
        backend_ = get_backend(backend)
        #: the backend's name (``get_backend(model.backend)`` gives the backend)
        self.backend: str = backend_.name
        self.input_size, self.hidden, self.output_size = input_size, hidden, output_size
        self.tokens, self.readout, self.loss_kind = tokens, readout, loss
        self.dtype = dtype = normalise_dtype(dtype)
        # One independent stream per layer and one for the readout, all from the seed.
        seqs = np.random.SeedSequence(seed).spawn(layers + 1)
        self.layers: list[RecurrentLayer] = []
        for k in range(layers):
            layer_seed = int(seqs[k].generate_state(1)[0])
            layer = RecurrentLayer(
                self.variant, input_size if k == 0 else hidden, hidden,
                seed=layer_seed, dtype=dtype, backend=backend_,
            )
            initialise(layer, init, seed=layer_seed, tmax=tmax)
            self.layers.append(layer)
        # The readout, PyTorch's nn.Linear default: U(-1/sqrt(H), 1/sqrt(H)).
        O, H = output_size, hidden
        self.readout_params = np.zeros(O * H + O, dtype=dtype)
        self.readout_grads = np.zeros_like(self.readout_params)
        bound = 1.0 / math.sqrt(H)
        rng = np.random.default_rng(seqs[layers])
        self.readout_params[:] = rng.uniform(-bound, bound, self.readout_params.size)
        #: the readout ``z = V h + c`` and its gradients, views of the flat buffers
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

    def predict(self, x: np.ndarray, state: list | None = None) -> tuple[np.ndarray, list]:
        """Outputs (logits, or values for MSE) and each layer's last state; keeps nothing."""
        return self.runner.predict(x, state)

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None = None
                ) -> tuple[float, list]:
        """Mean loss on a batch, keeping what :meth:`backward` needs; and the last states.

        ``state`` is a list with one initial state per layer (None for zeros); pass the
        returned list back in to carry the state over to the next batch. On a device
        backend the states stay on the device and only the loss comes back.
        """
        return self.runner.forward(x, y, state)

    def backward(self) -> None:
        """Gradients of the last :meth:`forward`'s loss into every buffer's gradient
        (on a device backend: into the device's gradients)."""
        self.runner.backward()
