"""The CUDA backend's model runner: a :class:`~gruablate.model.Model`'s training step on the GPU.

:class:`DeviceModel` keeps what a training run needs in device arrays: the layers'
packed parameters and gradients (their :class:`~gruablate.backends.cuda.layer.CudaLayer`'s
``d_params`` / ``d_grads``), the readout ``V, c`` and its gradient, the activations, the
logits and their gradient, and the carried-over recurrent state. Per step the host
uploads the batch (inputs and targets: data; with dropout or zoneout on, the masks
drawn for it too) and reads back one scalar, the loss;
:class:`~gruablate.backends.cuda.optim.DeviceAdam` adds the gradient norm. Evaluation copies the
predictions back. The host's ``flat_params`` and ``readout_params`` are left as they
were until :meth:`DeviceModel.sync_to_host` is called.

The step mirrors :meth:`Model.forward` / :meth:`Model.backward` and the host runner
(:class:`~gruablate.backends.host.HostRunner`, the specification): one-hot encoding on
the device, the layers through their device-level API, the readout ``z = V h + c`` and
its gradients with the layers' tiled product kernel, and the loss kernels of
:mod:`gruablate.backends.cuda.train_source` (float64 inside, as on the host).

It applies the model's dropout, zoneout and bidirectional layers as the host runner
does. The masks are :meth:`Model.masks`'s, one call per forward or predict (the same
draws as the host's), uploaded like the batch: each layer's zoneout mask goes to its
zoneout cell's kernels, a dropout mask multiplies a layer's output on the way up and
its gradient on the way down. A reverse direction runs the same kernels on its input
reversed in time, and its output and gradients are reversed back; the two directions'
outputs lie side by side (forward first) in one (T, B, 2H) array for the next layer
and the readout. The ``copy_steps`` kernel does all of that glue: reversal, mask,
placement at a column offset, and the sum of the two directions' input gradients.

Sequence lengths (``lengths=``, checked by :meth:`Model.check_lengths`) go to every
layer's kernels, which stop a row after its last real step and carry its states past
it; ``copy_steps`` with the lengths reverses each row's real steps only and writes
zeros past them, which is how a layer's output reaches the next layer and an
every-step readout: zero at the padding, as the host's layers give it. The state a
layer holds at step ``T`` is so each row's after its own last step: what a last-step
readout reads (the forward direction's output at step ``lengths[b] − 1``, the reverse
direction's at step 0), and the gradient goes back to the forward direction at each
row's own last step. With an every-step readout the loss kernel's positions past a
row's length are cleared (``clear_padding``; their targets are replaced on the host, not
read) and the mean runs over the real positions. Without lengths the runner launches
exactly what it did before they existed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import NonFiniteError
from ..base import ModelLike
from ..state import pack_state, real_steps, reverse_index, unpack_state
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
        #: each layer's implementation: with zoneout on, its zoneout cell's (every run
        #: passes a mask, drawn in training, the rate at evaluation), whose device
        #: parameters and gradients are then the ones trained
        self.impls = [layer.zoneout_impl if model.zoneout else layer.impl
                      for layer in model.layers]
        #: readout parameters ``[V (O x width), c (O)]`` and their gradients, on the device
        self.d_ro = self.cuda.device_array(model.readout_params.size, dtype=self.dt)
        self.d_ro_grads = self.cuda.device_array(model.readout_params.size, dtype=self.dt)
        self.buffers = DeviceBuffers(self.cuda, self.dt)
        self._dummy = self.cuda.device_array(1, dtype=self.dt)  # an argument not read
        self._no_lens = self.cuda.device_array(1, dtype=np.int64)
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
        if self.model.zoneout:  # the layers' plain kernels: the trained parameters too
            for layer in self.model.layers:
                layer.impl.params_changed()

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

    def _copy_steps(self, T: int, B: int, W: int, src: Any, s_off: int, s_ld: int,
                    s_rev: bool, dst: Any, d_off: int, d_ld: int, d_rev: bool,
                    mask: Any = None, add: bool = False, lens: Any = None) -> None:
        """``dst`` = ``src`` over T steps × B rows × W columns (the ``copy_steps``
        kernel): each side at its offset and row stride, in reverse time if asked, times
        ``mask`` (T, B, W) if given, added to ``dst`` if ``add``. With ``lens`` (each
        row's length, on the device) a reversal reverses each row's real steps only, and
        ``src`` reads as zero past them."""
        n, ew = T * B * W, self.geo.ew_threads
        self.k.copy_steps[blocks(n, ew), ew](
            T, B, W, src, s_off, s_ld, int(s_rev), dst, d_off, d_ld, int(d_rev),
            self._no_lens if lens is None else lens, int(lens is not None),
            self._dummy if mask is None else mask, int(mask is not None), int(add))

    def _masks(self, T: int, B: int, keep: bool, lengths: np.ndarray | None
               ) -> list[tuple[Any, Any]]:
        """The model's masks for this run (one :meth:`Model.masks` call, as the host
        runner makes: the same draws), uploaded: per entry of ``model.layers`` the
        zoneout mask in the layer's own step order (reversed for a reverse direction:
        each row's real steps, with ``lengths``) and the dropout mask in the model's;
        None where there is none."""
        M = self.model
        masks = M.masks(T, B, training=keep)
        if masks is None:
            return [(None, None)] * len(self.impls)
        tag = "" if keep else "_inf"
        steps = None if lengths is None else (reverse_index(T, lengths), np.arange(B))
        out = []
        for i, (z, d) in enumerate(masks):
            if z is not None:
                if i % M.directions:  # a reverse direction's own step order
                    z = z[::-1] if steps is None else z[steps]
                z = self.buffers.upload(f"zm{i}{tag}", z)
            if d is not None:
                d = self.buffers.upload(f"dm{i}", d)
            out.append((z, d))
        return out

    def _layers(self, x: np.ndarray, state: list | None, keep: bool,
                lengths: np.ndarray | None = None
                ) -> tuple[list, tuple[Any, int, int], list, Any, int, int]:
        """Encode ``x`` and run every layer (both directions of each, the reverse one on
        its input reversed in time), with the masks of :meth:`_masks` and the
        ``lengths`` if given. Returns each layer's saved device arrays, what the readout
        reads ``(array, offset, row stride)`` (rows of ``model.width``), the masks, the
        lengths on the device (None without), T and B."""
        M = self.model
        xd, T, B = self._encode(x)
        masks = self._masks(T, B, keep, lengths)
        states = state if state is not None else [None] * len(self.impls)
        if len(states) != len(self.impls):
            raise ValueError(f"state must hold one initial state per layer and direction"
                             f" ({len(self.impls)}), got {len(states)}")
        H, D, W, BH = M.hidden, M.directions, M.width, B * M.hidden
        tag = "" if keep else "_inf"  # an evaluation leaves a training step's inputs
        lens = None if lengths is None else self.buffers.upload(f"lens{tag}", lengths)
        saved: list = []
        h, w = xd, M.input_size  # depth k's input in the model's step order, (T, B, w)
        for k in range(M.depth):
            for d in range(D):
                i = k * D + d
                xin = h
                if d == 1:  # the reverse direction reads the steps last to first
                    xin = self.buffers.get(f"xrev{k}{tag}", T * B * w)
                    self._copy_steps(T, B, w, h, 0, w, False, xin, 0, w, True, lens=lens)
                saved.append(self.impls[i].forward_device(
                    xin, self._state_in(i, states[i], B), T, B, keep, lens, masks[i][0]))
            if k == M.depth - 1:
                break
            if D == 1 and masks[k][1] is None and lens is None:
                h = saved[k][1][BH:]  # hs[1:] is y, the next layer's input
            else:  # both directions side by side, forward first, dropout applied, and
                # with lengths zeros past each row's (the kernels carry h there)
                h = self.buffers.get(f"h{k}{tag}", T * B * W)
                for d in range(D):
                    i = k * D + d
                    self._copy_steps(T, B, H, saved[i][1], BH, H, d == 1, h, d * H, W,
                                     False, masks[i][1], lens=lens)
            w = W
        top = saved[-D:]
        # With lengths, h at step T is each row's after its own last step (the kernels
        # carry it past the row's length): its forward output at step lengths[b] - 1,
        # its reverse one at step 0. So a last-step readout reads step T as before.
        if D == 1 and (M.readout == "last" or lens is None):
            # the top layer's history: every step's output, or the last one
            read = (top[0][1], BH if M.readout == "every" else T * BH, H)
        elif M.readout == "every":  # side by side, zeros past each row's length
            cat = self.buffers.get(f"top{tag}", T * B * W)
            for d in range(D):
                self._copy_steps(T, B, H, top[d][1], BH, H, d == 1, cat, d * H, W, False,
                                 lens=lens)
            read = (cat, 0, W)
        else:  # each direction's own last step: its step T - 1, the model's 0 for reverse
            cat = self.buffers.get(f"top_last{tag}", B * W)
            for d in range(D):
                self._copy_steps(1, B, H, top[d][1], T * BH, H, False, cat, d * H, W, False)
            read = (cat, 0, W)
        return saved, read, masks, lens, T, B

    def _readout(self, read: tuple[Any, int, int], T: int, B: int) -> tuple[Any, int]:
        """``z = V h + c`` on what :meth:`_layers` says the readout reads: the flat (R, O)
        logits and R."""
        M = self.model
        W, O = M.width, M.output_size
        R = T * B if M.readout == "every" else B
        top, off, ld = read
        z = self.buffers.get("z", R * O)
        self._matmul(R, O, W, top, off, ld, 1, self.d_ro, 0, 1, W, z, 0, O)
        ew = self.geo.ew_threads
        self.k.add_bias[blocks(R * O, ew), ew](R, O, z, self.d_ro, O * W)
        return z, R

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
    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None = None,
                lengths: np.ndarray | None = None) -> tuple[float, list]:
        """Mean loss on a batch, keeping what :meth:`backward` needs, and each layer's last
        state as a device array (pass the list back in to carry it over; it is valid
        until the next call). Only the loss comes back to the host. ``lengths``: each
        row's real steps (int64 (B,), checked by :meth:`Model.check_lengths`), or None."""
        M = self.model
        saved, read, masks, lens, T, B = self._layers(x, state, True, lengths)
        z, R = self._readout(read, T, B)
        O = M.output_size
        y = np.asarray(y)
        if y.size != (R if M.loss_kind == "ce" else R * O):
            raise ValueError(f"targets of shape {y.shape} do not fit {R} predicted positions")
        # with lengths, an every-step readout's loss reads the real steps only
        padded = lengths if M.readout == "every" else None
        if padded is not None:  # the padding's targets are not read
            real = real_steps(y, T, padded)
            # harmless targets at the padding (the loss kernel's values there are cleared)
            y = np.where(real.reshape(real.shape + (1,) * (y.ndim - 2)), y, 0)
        if M.loss_kind == "ce":
            yd, n, kern = self.buffers.upload("y", y.astype(np.int64)), y.size, self.k.loss_ce
        else:
            yd = self.buffers.upload("y", y.astype(np.float64))
            n = y.size if M.loss_kind == "mse" else y.size // y.shape[-1]
            kern = self.k.loss_mse if M.loss_kind == "mse" else self.k.loss_bernoulli
        if padded is not None:  # the mean over the real positions
            n = int(padded.sum()) * (O if M.loss_kind == "mse" else 1)
        dz = self.buffers.get("dz", R * O)
        lrow = self.buffers.get("lrow", R, np.float64)
        ew = self.geo.ew_threads
        kern[blocks(R, ew), ew](R, O, z, yd, float(n), dz, lrow)
        if padded is not None:
            self.k.clear_padding[blocks(R, ew), ew](R, B, O, lens, dz, lrow)
        out = self.buffers.get("loss", 1, np.float64)
        self.reduce_sum([("sum", R, lrow)], out, 0)
        loss = float(out.copy_to_host()[0]) / n  # the forward pass's one download
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss}")
        last = self._last_states(saved, T, B, keep=True)
        self._saved = (saved, read, masks, lens, dz, T, B, R)
        return loss, last

    def backward(self) -> None:
        """Gradients of the last :meth:`forward`'s loss into the device gradient buffers."""
        if self._saved is None:
            raise ValueError("backward needs a preceding forward")
        saved, (top, t_off, t_ld), masks, lens, dz, T, B, R = self._saved
        M = self.model
        H, W, D, O = M.hidden, M.width, M.directions, M.output_size
        BH = B * H
        # dV = dz^T top, dc = column sums of dz (no atomics), dtop = dz V.
        self._matmul(O, W, R, dz, 0, 1, O, top, t_off, t_ld, 1, self.d_ro_grads, 0, W)
        self.m.colsum[blocks(O, self.geo.jt), self.geo.threads](R, O, dz, 0, O, self.d_ro_grads,
                                                                 O * W)
        # g: the gradient on the top layer's output, the model's step order, (T, B, W)
        if M.readout == "every":
            g = self.buffers.get("dy", T * B * W)
            self._matmul(R, W, O, dz, 0, O, 1, self.d_ro, 0, W, 1, g, 0, W)
        else:  # only each direction's last step is read out: g is zero elsewhere
            g = self._zeros("dy", T * B * W)
            for d in range(D):  # the forward direction's step T - 1, the reverse one's 0
                if d == 0 and lens is not None:  # each row's own last step lengths[b] - 1
                    last = self.buffers.get("dy_last", B * H)
                    self._matmul(B, H, O, dz, 0, O, 1, self.d_ro, 0, W, 1, last, 0, H)
                    self._copy_steps(1, B, H, last, 0, H, False, g, 0, W, True, lens=lens)
                    continue
                row = T - 1 if d == 0 else 0
                self._matmul(B, H, O, dz, 0, O, 1, self.d_ro, d * H, W, 1, g,
                             row * B * W + d * H, W)
        for k in range(M.depth - 1, -1, -1):
            dx = None
            for d in range(D):
                i = k * D + d
                gi, dmask = g, masks[i][1]
                if D == 2 or dmask is not None:  # its half, its step order, its dropout
                    gi = self.buffers.get(f"dy{i}", T * BH)
                    self._copy_steps(T, B, H, g, d * H, W, False, gi, 0, H, d == 1, dmask,
                                     lens=lens)
                S = M.layers[i].plan.n_states
                dsT = self._zeros(f"zero_dstate{i}", S * BH)
                dxi, _ = self.impls[i].backward_device(saved[i], gi, dsT, T, B)
                if d == 0:
                    dx = dxi
                elif k:  # both directions read the same input: add the reverse one's,
                    # back in the model's step order, into the forward one's dx buffer
                    self._copy_steps(T, B, W, dxi, 0, W, True, dx, 0, W, False, add=True,
                                     lens=lens)
            g = dx
        self._saved = None

    def predict(self, x: np.ndarray, state: list | None = None,
                lengths: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        """Outputs and each layer's last state, copied to the host (evaluation); with
        ``lengths`` as for :meth:`forward` (the outputs past a row's length are the
        readout of zeros)."""
        M = self.model
        saved, read, _, _, T, B = self._layers(x, state, False, lengths)
        z, _ = self._readout(read, T, B)
        shape = (T, B, M.output_size) if M.readout == "every" else (B, M.output_size)
        out = z.copy_to_host().reshape(shape)
        last = []
        for st in self._last_states(saved, T, B, keep=False):
            s = st.copy_to_host().reshape(-1, B, M.hidden)
            last.append(unpack_state(s))
        return out, last
