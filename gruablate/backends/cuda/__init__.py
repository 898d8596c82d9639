"""The CUDA backend: ``numba.cuda`` kernels generated per variant, and a training step
that stays on the device.

- :mod:`.cell_source` (each cell's kernels, printed from its graph), :mod:`.source`
  (what they share, and the products), :mod:`.train_source`: the kernel text (pure
  text, no GPU needed);
- :mod:`.kernels`, :mod:`.train_kernels`: loading it as disk-cached modules, PTX, the
  shared products;
- :mod:`.layer`: one layer (:class:`~.layer.CudaLayer`); :mod:`.model` and
  :mod:`.optim`: the model's step and Adam on the device; :mod:`.buffers`: cached
  device arrays; :mod:`.device`: whether numba-cuda and a GPU (or the simulator) are
  here.

``numba-cuda`` is optional: nothing imports it until a CUDA layer is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...cells.plan import KernelPlan
from ...cells.spec import Variant
from ..base import Backend, LayerLike, ModelLike

if TYPE_CHECKING:  # pragma: no cover
    from ...optim import Adam
    from .layer import CudaLayer
    from .model import DeviceModel


class CudaBackend(Backend):
    """numba.cuda on an NVIDIA GPU (or in numba's simulator, ``NUMBA_ENABLE_CUDASIM=1``)."""

    name = "cuda"
    torch_device = "cuda"

    def unavailable(self) -> str | None:
        from .device import unavailable_reason

        return unavailable_reason()

    def require(self) -> None:
        from .device import require_cuda

        require_cuda()  # a CudaUnavailableError: what to install, or that no GPU answered

    def layer(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
              params: np.ndarray, grads: np.ndarray) -> CudaLayer:
        from .layer import CudaLayer

        return CudaLayer(plan, dtype, input_size, hidden, params, grads)

    def model_runner(self, model: ModelLike) -> DeviceModel:
        from .model import DeviceModel

        return DeviceModel(model)

    def runner_features(self) -> frozenset[str]:
        """The device runner applies dropout, zoneout, bidirectional layers and
        sequence lengths as the host runner does."""
        return frozenset({"dropout", "zoneout", "bidirectional", "lengths"})

    def optimiser(self, model: ModelLike, lr: float, **options: Any) -> Adam:
        from .optim import DeviceAdam

        return DeviceAdam(model.runner, lr, **options)

    def timed_call(self, layer: LayerLike, x: np.ndarray, dy: np.ndarray, mode: str
                   ) -> tuple[Callable[[], None], Callable[[], None]]:
        """Inputs resident on the device, as a PyTorch peer's are: the layer's device
        entry points, and ``cuda.synchronize`` to wait (streaming: the host API)."""
        from .device import require_cuda

        cuda = require_cuda()
        if mode == "stream":
            return super().timed_call(layer, x, dy, mode)[0], cuda.synchronize
        impl: CudaLayer = layer.impl  # type: ignore[assignment]
        T, B, _ = x.shape
        S, H = layer.plan.n_states, layer.hidden_size
        xd = cuda.to_device(x.reshape(-1))
        s0d = cuda.to_device(np.zeros(S * B * H, dtype=x.dtype))
        if mode == "inference":
            def fn() -> None:
                impl.forward_device(xd, s0d, T, B, False)
        else:
            dyd = cuda.to_device(np.ascontiguousarray(dy).reshape(-1))
            dsd = cuda.to_device(np.zeros(S * B * H, dtype=x.dtype))

            def fn() -> None:
                saved = impl.forward_device(xd, s0d, T, B, True)
                impl.backward_device(saved, dyd, dsd, T, B)
        return fn, cuda.synchronize

    def kernel_source(self, variant: Variant, dtype: str) -> str:
        from .cell_source import cell_source
        from .source import DEFAULT_GEOMETRY

        return cell_source(variant, dtype, DEFAULT_GEOMETRY)
