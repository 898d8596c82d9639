"""A sequence model: encoding → stacked recurrent layers → readout → loss.

The recurrent work runs on the same :class:`~gruablate.RecurrentLayer` kernels users
import; the encoding, readout and loss around them are a few NumPy lines.

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

Losses and gradients are computed in float64 and the gradients cast to the model's
dtype, so the reported loss does not depend on the float32 rounding of a sum.
"""

from __future__ import annotations

import math

import numpy as np

from .catalogue import get_variant
from .init import initialise
from .layer import RecurrentLayer
from .spec import Variant
from .vocabulary import LOSSES, READOUTS, normalise_dtype, positive_int


class NonFiniteError(FloatingPointError):
    """An activation, loss or gradient became NaN or infinite: the run diverged."""


# --------------------------------------------------------------- loss primitives
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


# ------------------------------------------------------------------------ model
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
        backend: str = "cpu",
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
                seed=layer_seed, dtype=dtype, backend=backend,
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
        self.V = self.readout_params[: O * H].reshape(O, H)
        self.c = self.readout_params[O * H :]
        self._dV = self.readout_grads[: O * H].reshape(O, H)
        self._dc = self.readout_grads[O * H :]
        self._saved: tuple | None = None
        # With backend="cuda" a training step runs on the device (gruablate.cuda_model);
        # the methods below hand over to it. Imported lazily: numba-cuda is optional.
        self._device = None
        if backend == "cuda":
            from .cuda_model import DeviceModel

            self._device = DeviceModel(self)

    # ------------------------------------------------------------ parameters
    @property
    def buffers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every (flat parameter, flat gradient) pair; the optimiser updates these in place."""
        out = [(layer.flat_params, layer.flat_grads) for layer in self.layers]
        out.append((self.readout_params, self.readout_grads))
        return out

    def params_changed(self) -> None:
        """Tell the layers their host parameters changed (after an optimiser step).

        A no-op on the CPU, where kernels read the host buffers; the CUDA backend keeps a
        device copy that must be re-uploaded (the readout's too).
        """
        if self._device is not None:
            self._device.params_changed()
            return
        for layer in self.layers:
            layer.params_changed()

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

    def _encode(self, x: np.ndarray) -> np.ndarray:
        if self.tokens:
            x = self.check_tokens(x)
            out = np.zeros((*x.shape, self.input_size), dtype=self.dtype)
            np.put_along_axis(out, x[..., None], 1.0, axis=-1)
            return out
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _run(self, x: np.ndarray, state: list | None, keep: bool) -> tuple[tuple, list]:
        h = self._encode(x)
        if keep and np.may_share_memory(h, x):
            h = h.copy()  # kept for backward: the caller may overwrite its x before then
        states = state if state is not None else [None] * len(self.layers)
        last = []
        for k, (layer, s) in enumerate(zip(self.layers, states, strict=True)):
            # The model owns every array between layers: no defensive copies needed.
            h, s_last = layer.forward(h, s, keep=keep, copy=False)
            if not np.isfinite(h).all():
                raise NonFiniteError(f"layer {k} produced a non-finite activation")
            last.append(s_last)
        top = h if self.readout == "every" else h[-1]
        z = top @ self.V.T + self.c
        return (top, z, h.shape[:2]), last

    def sync_to_host(self) -> None:
        """Bring the host parameter buffers up to date (after training on the device).

        On the CUDA backend the optimiser updates the device's parameters only; call this
        before reading ``buffers`` or a layer's ``params``. A no-op on the CPU.
        """
        if self._device is not None:
            self._device.to_host()

    def predict(self, x: np.ndarray, state: list | None = None) -> tuple[np.ndarray, list]:
        """Outputs (logits, or values for MSE) and each layer's last state; keeps nothing."""
        if self._device is not None:
            return self._device.predict(x, state)
        (_, z, _), last = self._run(x, state, keep=False)
        return z, last

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None = None
                ) -> tuple[float, list]:
        """Mean loss on a batch, keeping what :meth:`backward` needs; and the last states.

        ``state`` is a list with one initial state per layer (None for zeros); pass the
        returned list back in to carry the state over to the next batch. On the CUDA
        backend the states stay on the device and only the loss comes back.
        """
        if self._device is not None:
            return self._device.forward(x, y, state)
        (top, z, steps), last = self._run(x, state, keep=True)
        loss, dz = loss_and_grad(self.loss_kind, z, y)
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        self._saved = (top, dz.astype(self.dtype), steps)
        return loss, last

    def backward(self) -> None:
        """Gradients of the last :meth:`forward`'s loss into every buffer's gradient
        (on the CUDA backend: into the device gradients, see ``gruablate.cuda_model``)."""
        if self._device is not None:
            self._device.backward()
            return
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        top, dz, (T, B) = self._saved
        H = self.hidden
        dz2 = dz.reshape(-1, self.output_size)
        # A contiguous copy of dz^T first: OpenBLAS took ~30x longer on the transposed
        # view of this tall, narrow matrix (measured: 5 ms against 0.16 ms).
        self._dV[...] = np.ascontiguousarray(dz2.T) @ top.reshape(-1, H)
        self._dc[:] = dz2.sum(axis=0)
        dtop = dz @ self.V
        if not np.isfinite(dtop).all():  # finite loss, overflowing gradient: diverged too
            raise NonFiniteError("the gradient of the readout is not finite")
        if self.readout == "every":
            dy = np.ascontiguousarray(dtop)
        else:
            dy = np.zeros((T, B, H), dtype=self.dtype)
            dy[-1] = dtop
        for layer in reversed(self.layers):
            dy, _, _ = layer.backward(dy)
        self._saved = None
