"""Adam on the device: the optimiser of a CUDA training run.

:class:`DeviceAdam` is :class:`gruablate.optim.Adam` (same options, validation, schedule
and formulas) with its moments in device arrays and its update a kernel
(``adam`` in :mod:`gruablate.backends.cuda.train_source`). The global gradient norm is
reduced on the device in float64 and is the only number a step brings back to the
host: the host needs it anyway to stop a diverged run, and it derives the clipping
scale and the bias corrections from it as the host optimiser does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...optim import Adam
from .kernels import blocks

if TYPE_CHECKING:  # pragma: no cover
    from .model import DeviceModel


class DeviceAdam(Adam):
    """Adam over the device buffers of a ``backend="cuda"`` :class:`~gruablate.model.Model`.

    Takes the model's runner (``model.runner``, a :class:`DeviceModel`) instead of host
    buffers, and the keyword options of :class:`Adam`.
    :meth:`step` updates the device parameters in place and refreshes what the layers
    derive from them; the host's ``Model.buffers`` are not touched (see
    ``DeviceModel.sync_to_host``).
    """

    #: The parameters are updated on the device: the caller must not re-upload the
    #: host's (stale) copies after a step.
    on_device = True

    def __init__(self, runner: DeviceModel, lr: float = 1e-3, **options) -> None:
        if not hasattr(runner, "device_buffers"):
            raise ValueError("DeviceAdam needs the runner of a model built with"
                             " backend='cuda' (model.runner)")
        # The host optimiser validates the options; its host moments are not used.
        super().__init__(runner.model.buffers, lr, **options)
        self.dev = runner
        cuda = self.dev.cuda
        self.buffers_device = self.dev.device_buffers
        self.state = []
        for p, _ in self.buffers_device:
            m = cuda.device_array(p.size, dtype=p.dtype)
            v = cuda.device_array(p.size, dtype=p.dtype)
            for buf in (m, v):
                self.dev.m.zero[blocks(buf.size, self.dev.geo.ew_threads),
                                self.dev.geo.ew_threads](buf.size, buf)
            self.state.append((m, v))

    def grad_norm(self) -> float:
        """Global L2 norm of the device gradients (one scalar copied back)."""
        out = self.dev.buffers.get("norm", 1, "float64")
        self.dev.reduce_sum([("sumsq", g.size, g) for _, g in self.buffers_device], out, 0)
        return math.sqrt(float(out.copy_to_host()[0]))

    def _update(self, lr: float, scale: float, bc1: float, bc2: float) -> None:
        """Adam's update of the device buffers (``Adam.step`` computes the scalars)."""
        ew = self.dev.geo.ew_threads
        for (p, g), (m, v) in zip(self.buffers_device, self.state, strict=True):
            self.dev.k.adam[blocks(p.size, ew), ew](
                p.size, p, g, m, v, lr, self.beta1, self.beta2, self.eps, scale, bc1, bc2
            )
        self.dev.device_params_changed()
