"""The CUDA backend's model runner: a :class:`~gruablate.model.Model`'s training step on the GPU.

:class:`DeviceModel` keeps what a training run needs in device arrays: the layers'
packed parameters and gradients (their :class:`~gruablate.backends.cuda.layer.CudaLayer`'s
``d_params`` / ``d_grads``), the readout ``V, c`` and its gradient, the activations, the
logits and their gradient, and the carried-over recurrent state. Per step the host
uploads the batch (inputs and targets: data) and reads back one scalar, the loss;
:class:`~gruablate.backends.cuda.optim.DeviceAdam` adds the gradient norm. Evaluation copies the
predictions back. The host's ``flat_params`` and ``readout_params`` are left as they
were until :meth:`DeviceModel.sync_to_host` is called.

The step mirrors :meth:`Model.forward` / :meth:`Model.backward`: one-hot encoding on the
device, the layers through their device-level API, the readout ``z = V h + c`` and
its gradients with the layers' tiled product kernel, and the loss kernels of
:mod:`gruablate.backends.cuda.train_source` (float64 inside, as on the host).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import NonFiniteError
from ..base import ModelLike
from ..state import pack_state, unpack_state
from .buffers import DeviceBuffers
from .device import geometry, require_cuda
from .kernels import blocks, common_kernels, launch_matmul
from .train_kernels import train_kernels

#: Most blocks a partial-sum launch uses: beyond that each thread just strides further.
MAX_PARTIALS = 256


class DeviceModel:
    """Runs a :class:`~gruablate.model.Model` built with ``backend="cuda"`` on the device.

    The CUDA backend's model runner (``Model.runner``): :meth:`Model.forward`,
    :meth:`Model.backward`, :meth:`Model.predict` and :meth:`Model.params_changed` call it.
    """

    def __init__(self, model: ModelLike) -> None:
        self.cuda = require_cuda()
        self.model = model
        self.geo = geometry()
        self.dt = np.dtype(model.dtype)
        self.m = common_kernels(model.dtype, self.geo)
        self.k = train_kernels(model.dtype, self.geo)
        self.impls = [layer.impl for layer in model.layers]
        #: readout parameters ``[V (O x H), c (O)]`` and their gradients, on the device
        self.d_ro = self.cuda.device_array(model.readout_params.size, dtype=self.dt)
        self.d_ro_grads = self.cuda.device_array(model.readout_params.size, dtype=self.dt)
        self.buffers = DeviceBuffers(self.cuda, self.dt)
        self._saved: tuple | None = None
        self.d_ro.copy_to_device(model.readout_params)

    # ------------------------------------------------------------- parameters
    @property
    def device_buffers(self) -> list[tuple[Any, Any]]:
        """(parameters, gradients) device pairs in the order of :attr:`Model.buffers`."""
        out = [(impl.d_params, impl.d_grads) for impl in self.impls]
        out.append((self.d_ro, self.d_ro_grads))
        return out

    def params_changed(self) -> None:
        """Upload the host parameters of every layer and of the readout."""
        for layer in self.model.layers:
            layer.params_changed()
        self.d_ro.copy_to_device(self.model.readout_params)

    def device_params_changed(self) -> None:
        """Refresh what derives from the device parameters after they changed there."""
        for impl in self.impls:
            impl.device_params_changed()

    def sync_to_host(self) -> None:
        """Copy the device parameters into the host buffers (``Model.buffers``)."""
        for (params, _), (d_params, _) in zip(self.model.buffers, self.device_buffers,
                                                strict=True):
            d_params.copy_to_host(params)

    # ---------------------------------------------------------------- buffers
    def _zeros(self, name: str, size: int) -> Any:
        buf = self.buffers.get(name, size)
        ew = self.geo.ew_threads
        self.m.zero[blocks(buf.size, ew), ew](buf.size, buf)
        return buf

    def _matmul(self, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn, c, c_off, ldc) -> None:
        """``C = A B`` by the layers' tiled product kernel."""
        launch_matmul(self.m, self.geo, M, N, K, a, a_off, sam, sak, b, b_off, sbk, sbn,
                      c, c_off, ldc)

    def reduce_sum(self, parts: list[tuple[str, int, Any]], out: Any, o_off: int) -> None:
        """``out[o_off]`` = float64 sum (``"sum"``) or sum of squares (``"sumsq"``) of
        every listed buffer: per-block partials, then one single-block launch."""
        ew = self.geo.ew_threads
        nblk = [min(blocks(n, ew), MAX_PARTIALS) for _, n, _ in parts]
        part = self.buffers.get("partials", sum(nblk), np.float64)
        off = 0
        for (kind, n, src), nb in zip(parts, nblk, strict=True):
            kern = self.k.sum_partial if kind == "sum" else self.k.sumsq_partial
            kern[nb, ew](n, src, part, off)
            off += nb
        self.k.sum_final[1, ew](off, part, out, o_off)

    # -------------------------------------------------------------- encoding
    def _encode(self, x: np.ndarray) -> tuple[Any, int, int]:
        """Upload a batch and encode it on the device: ``(flat (T, B, I), T, B)``."""
        M = self.model
        if M.tokens:
            x = M.check_tokens(x)
            tok = self.buffers.upload("tokens", x.astype(np.int64))
            n, ew = x.size, self.geo.ew_threads
            out = self.buffers.get("x", n * M.input_size)
            self.k.encode_tokens[blocks(n * M.input_size, ew), ew](n, M.input_size, tok, out)
            return out, x.shape[0], x.shape[1]
        x = np.ascontiguousarray(x, dtype=self.dt)
        if x.ndim != 3 or x.shape[2] != M.input_size:
            raise ValueError(f"inputs must be (T, B, {M.input_size}), got {x.shape}")
        return self.buffers.upload("x", x), x.shape[0], x.shape[1]

    def _state_in(self, k: int, state: Any, B: int) -> Any:
        """Layer ``k``'s initial state as a flat (S, B, H) device array: zeros for None, a
        device array as it is (what :meth:`forward` returned), a host state uploaded."""
        S, H = self.model.layers[k].plan.n_states, self.model.hidden
        if state is None:
            return self._zeros(f"zero_state{k}", S * B * H)
        if hasattr(state, "copy_to_host"):
            return state
        M = self.model
        host = pack_state("state", state, M.variant.state_names, B, M.hidden, M.dtype)
        return self.buffers.upload(f"state_in{k}", host)

    def _layers(self, x: np.ndarray, state: list | None, keep: bool) -> tuple[list, int, int]:
        xd, T, B = self._encode(x)
        states = state if state is not None else [None] * len(self.impls)
        saved, h = [], xd
        for k, (impl, s) in enumerate(zip(self.impls, states, strict=True)):
            out = impl.forward_device(h, self._state_in(k, s, B), T, B, keep)
            saved.append(out)
            h = out[1][B * self.model.hidden :]  # hs[1:] is y, the next layer's input
        return saved, T, B

    def _readout(self, hs: Any, T: int, B: int) -> tuple[Any, int, int]:
        """``z = V h + c`` on the top layer's ``hs``: the flat (R, O) logits, R and the
        offset of the read-out rows in ``hs``."""
        M = self.model
        H, O, BH = M.hidden, M.output_size, B * M.hidden
        R, off = (T * B, BH) if M.readout == "every" else (B, T * BH)
        z = self.buffers.get("z", R * O)
        self._matmul(R, O, H, hs, off, H, 1, self.d_ro, 0, 1, H, z, 0, O)
        ew = self.geo.ew_threads
        self.k.add_bias[blocks(R * O, ew), ew](R, O, z, self.d_ro, O * H)
        return z, R, off

    def _last_states(self, saved: list, T: int, B: int, keep: bool) -> list[Any]:
        """Copy each layer's last state into a device buffer of its own (device to device):
        the layer's buffers are overwritten by the next call. Training and inference use
        different buffers, so an evaluation between two steps leaves the carried state."""
        name = "state_out" if keep else "state_out_inf"
        BH = B * self.model.hidden
        out = []
        for k, (impl, layer_saved) in enumerate(zip(self.impls, saved, strict=True)):
            S = self.model.layers[k].plan.n_states
            st = self.buffers.get(f"{name}{k}", S * BH)
            impl.copy_last_state(layer_saved, T, B, keep, st)
            out.append(st)
        return out

    # ---------------------------------------------------------------- running
    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None = None
                ) -> tuple[float, list]:
        """Mean loss on a batch, keeping what :meth:`backward` needs, and each layer's last
        state as a device array (pass the list back in to carry it over; it is valid
        until the next call). Only the loss comes back to the host."""
        M = self.model
        saved, T, B = self._layers(x, state, keep=True)
        z, R, off = self._readout(saved[-1][1], T, B)
        O = M.output_size
        y = np.asarray(y)
        if y.size != (R if M.loss_kind == "ce" else R * O):
            raise ValueError(f"targets of shape {y.shape} do not fit {R} predicted positions")
        if M.loss_kind == "ce":
            yd, n, kern = self.buffers.upload("y", y.astype(np.int64)), y.size, self.k.loss_ce
        else:
            yd = self.buffers.upload("y", y.astype(np.float64))
            n = y.size if M.loss_kind == "mse" else y.size // y.shape[-1]
            kern = self.k.loss_mse if M.loss_kind == "mse" else self.k.loss_bernoulli
        dz = self.buffers.get("dz", R * O)
        lrow = self.buffers.get("lrow", R, np.float64)
        ew = self.geo.ew_threads
        kern[blocks(R, ew), ew](R, O, z, yd, float(n), dz, lrow)
        out = self.buffers.get("loss", 1, np.float64)
        self.reduce_sum([("sum", R, lrow)], out, 0)
        loss = float(out.copy_to_host()[0]) / n  # the forward pass's one download
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        last = self._last_states(saved, T, B, keep=True)
        self._saved = (saved, dz, T, B, R, off)
        return loss, last

    def backward(self) -> None:
        """Gradients of the last :meth:`forward`'s loss into the device gradient buffers."""
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        saved, dz, T, B, R, off = self._saved
        M = self.model
        H, O, BH = M.hidden, M.output_size, B * M.hidden
        hs = saved[-1][1]
        # dV = dz^T top, dc = column sums of dz (no atomics), dtop = dz V.
        self._matmul(O, H, R, dz, 0, 1, O, hs, off, H, 1, self.d_ro_grads, 0, H)
        self.m.colsum[blocks(O, self.geo.jt), self.geo.threads](R, O, dz, 0, O, self.d_ro_grads,
                                                                 O * H)
        if M.readout == "every":
            dy = self.buffers.get("dy", T * BH)
            self._matmul(R, H, O, dz, 0, O, 1, self.d_ro, 0, H, 1, dy, 0, H)
        else:  # only the last step is read out: dy is zero before it
            dy = self._zeros("dy", T * BH)
            self._matmul(R, H, O, dz, 0, O, 1, self.d_ro, 0, H, 1, dy, (T - 1) * BH, H)
        for k in range(len(self.impls) - 1, -1, -1):
            S = M.layers[k].plan.n_states
            dsT = self._zeros(f"zero_dstate{k}", S * BH)
            dy, _ = self.impls[k].backward_device(saved[k], dy, dsT, T, B)
        self._saved = None

    def predict(self, x: np.ndarray, state: list | None = None) -> tuple[np.ndarray, list]:
        """Outputs and each layer's last state, copied to the host (evaluation)."""
        M = self.model
        saved, T, B = self._layers(x, state, keep=False)
        z, R, _ = self._readout(saved[-1][1], T, B)
        shape = (T, B, M.output_size) if M.readout == "every" else (B, M.output_size)
        out = z.copy_to_host().reshape(shape)
        last = []
        for st in self._last_states(saved, T, B, keep=False):
            s = st.copy_to_host().reshape(-1, B, M.hidden)
            last.append(unpack_state(s))
        return out, last
