"""What a backend is: the contract between the layer, the model, the optimiser and a
backend's kernels.

A :class:`Backend` hands out three things, each built from plain data (the kernel plan,
the dtype, the sizes and flat buffers), never from a :class:`~gruablate.RecurrentLayer`:

- a :class:`LayerImpl`, which runs one layer's forward and backward pass over a
  sequence on host arrays (:meth:`Backend.layer`);
- a model runner, which runs a whole training step of a :class:`~gruablate.model.Model`
  (:meth:`Backend.model_runner`; the default is :class:`~gruablate.backends.host.HostRunner`,
  the host NumPy step around the layers);
- an optimiser over the model's parameters (:meth:`Backend.optimiser`; the default is
  the host :class:`~gruablate.optim.Adam`).

It also says whether this machine can run it (:meth:`Backend.unavailable` gives the
reason when not), what its model runner applies beyond the plain step
(:meth:`Backend.runner_features`: dropout, zoneout, bidirectional layers, sequence
lengths) and, if it generates kernels, their source for a reader. Register one with
:func:`gruablate.backends.register`; ``docs/ARCHITECTURE.md`` lists the steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import BackendUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from ..cells.plan import KernelPlan
    from ..cells.spec import Variant
    from ..optim import Adam

#: A :class:`gruablate.model.Model` and a :class:`gruablate.RecurrentLayer` as the
#: backends see them: named, not imported, because the model and the layer import
#: the backends (an import back, even for types only, would close a circle).
ModelLike = Any
LayerLike = Any


class LayerImpl(Protocol):
    """One layer's kernels on a backend, over host arrays in the layer's dtype.

    Built by :meth:`Backend.layer` with the layer's flat parameter and gradient buffers;
    it reads the parameters from there (or a device copy made by :meth:`params_changed`)
    and writes the weight gradients into the gradient buffer.
    """

    def forward(self, x: np.ndarray, s0: np.ndarray, keep: bool,
                lengths: np.ndarray | None = None, zoneout: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, tuple]:
        """``x`` (T, B, I) and ``s0`` (S, B, H) to ``(y, sT, saved)``: ``y`` (T, B, H), the
        last state (S, B, H), and what :meth:`backward` needs (empty unless ``keep``).
        ``lengths`` (B,) int64, when given, is each row's number of real steps: past it
        the row's outputs are zero and its states carry over unchanged. ``zoneout``
        (T, B, H) is the mask of a layer made for a plan with zoneout
        (``make_plan(variant, zoneout=True)``), and only of such a layer. The layer asks
        a backend for lengths or zoneout only when it is given them."""
        ...

    def backward(self, saved: tuple, dy: np.ndarray, dsT: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(dx, ds0)`` from the output and last-state gradients; the weight gradients
        go into the flat gradient buffer. ``saved`` is ``(x, s0, y, *forward's saved)``."""
        ...

    def params_changed(self) -> None:
        """The host parameters changed: refresh any copy the backend keeps."""
        ...


class ModelRunner(Protocol):
    """Runs a model's training step and inference (see :class:`~gruablate.model.Model`)."""

    def forward(self, x: np.ndarray, y: np.ndarray, state: list | None,
                lengths: np.ndarray | None = None) -> tuple[float, list]:
        """The mean loss on a batch (each row's real steps only when ``lengths``, (B,)
        int64, is given) and each layer's last state; keeps what :meth:`backward` needs."""
        ...

    def backward(self) -> None:
        ...

    def predict(self, x: np.ndarray, state: list | None,
                lengths: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        ...

    def params_changed(self) -> None:
        ...

    def sync_to_host(self) -> None:
        ...


class Backend(ABC):
    """A place the kernels run: subclass, give :attr:`name` and :meth:`layer`, register.

    The defaults run the model's step on the host around the backend's layers and train
    with the host optimiser, which is right for any backend whose layers take and give
    host arrays; a device backend that keeps the whole step on its device overrides
    :meth:`model_runner` and :meth:`optimiser`.
    """

    #: The name users pass as ``backend=`` (letters, digits and ``_``).
    name: str = ""
    #: The device a PyTorch peer runs on beside this backend in ``run bench``
    #: (``"cpu"``, ``"cuda"``), or None when there is no such peer.
    torch_device: str | None = None
    #: The error :meth:`require` raises.
    unavailable_error: type[BackendUnavailableError] = BackendUnavailableError

    def unavailable(self) -> str | None:
        """None when this machine can run the backend, else the reason it cannot."""
        return None

    def available(self) -> bool:
        """Whether this machine can run the backend (see :meth:`unavailable`)."""
        return self.unavailable() is None

    def require(self) -> None:
        """Raise :attr:`unavailable_error` with the reason when the backend cannot run."""
        reason = self.unavailable()
        if reason is not None:
            raise self.unavailable_error(reason)

    def unsupported(self, variant: Variant) -> str | None:
        """None when this backend has kernels for ``variant``, else why not (checked
        when a layer is made, before any work)."""
        return None

    def require_variant(self, variant: Variant) -> None:
        """A ``ValueError`` naming the reason when :meth:`unsupported` gives one."""
        reason = self.unsupported(variant)
        if reason is not None:
            raise ValueError(reason)

    @abstractmethod
    def layer(self, plan: KernelPlan, dtype: str, input_size: int, hidden: int,
              params: np.ndarray, grads: np.ndarray) -> LayerImpl:
        """The implementation of one layer of ``plan`` whose flat parameters and
        gradients are ``params`` and ``grads`` (laid out as :meth:`KernelPlan.split`)."""

    def model_runner(self, model: ModelLike) -> ModelRunner:
        """What runs ``model``'s steps: by default the host step around the layers."""
        from .host import HostRunner

        return HostRunner(model)

    def runner_features(self) -> frozenset[str]:
        """What this backend's model runner does beyond the plain step, asked before a
        :class:`~gruablate.model.Model` builds anything: ``"dropout"`` (between stacked
        layers), ``"zoneout"``, ``"bidirectional"`` (layers run both ways in time) and
        ``"lengths"`` (padded batches with per-row sequence lengths). A backend that
        keeps the default :meth:`model_runner` has the host runner's (all four); one
        that overrides it has none unless it overrides this too (the CUDA backend does:
        its device runner has all four)."""
        from .host import HostRunner

        if type(self).model_runner is Backend.model_runner:
            return HostRunner.features
        return frozenset()

    def optimiser(self, model: ModelLike, lr: float, **options: Any) -> Adam:
        """The optimiser of ``model``: by default :class:`~gruablate.optim.Adam` over its
        host buffers (the caller then calls ``model.params_changed()`` after each step)."""
        from ..optim import Adam

        return Adam(model.buffers, lr, **options)

    def timed_call(self, layer: LayerLike, x: np.ndarray, dy: np.ndarray, mode: str
                   ) -> tuple[Callable[[], None], Callable[[], None]]:
        """What ``run bench`` times for ``layer`` in ``mode``, and the call that waits
        for it to finish. ``"inference"``: a forward pass keeping nothing; ``"train"``:
        forward and backward through time against ``dy``; ``"stream"``: one call per
        step, the state carried. The default times the layer's host API."""
        if mode == "inference":
            def fn() -> None:
                layer.forward(x, keep=False)
        elif mode == "train":
            def fn() -> None:
                layer.forward(x, keep=True, copy=False)
                layer.backward(dy)
        else:
            fn = _stream(layer, x)
        return fn, _no_wait

    def describe(self) -> dict[str, Any]:
        """What a benchmark record should say about how this backend's kernels were
        built here (the CPU backend: its register tile); empty by default."""
        return {}

    def kernel_source(self, variant: Variant, dtype: str) -> str:
        """The generated source of ``variant``'s kernels, for a reader."""
        raise ValueError(f"backend {self.name!r} generates no kernel source")

    def is_compiled(self, variant: Variant, dtype: str) -> bool:
        """Whether running ``variant`` costs no compilation (its machine code is cached)."""
        return True

    def __repr__(self) -> str:
        return f"<backend {self.name!r}>"


def _no_wait() -> None:
    pass


def _stream(layer: LayerLike, x: np.ndarray) -> Callable[[], None]:
    """Batch-1 streaming: one layer call per step through the host API, state carried."""
    def fn() -> None:
        state = None
        for t in range(x.shape[0]):
            _, state = layer.forward(x[t : t + 1], state, keep=False)
    return fn
