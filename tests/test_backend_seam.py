"""The backend seam is real: a third backend, defined and registered here, runs a layer
and a few training steps without touching a project file.

The toy backend is the float64 NumPy reference (``gruablate.cells.reference``, written
from the paper's equations) wrapped as a backend. It has no backward pass of its own, so
its gradients come from central finite differences of the reference's forward pass.
Everything is compared with the CPU backend at float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_differences

import gruablate
from gruablate import backends
from gruablate.backends import Backend, get_backend, register, unregister
from gruablate.cells import reference
from gruablate.model import Model
from gruablate.train import train

EPS = 1e-6


class ReferenceLayer:
    """One layer computed by the float64 reference, gradients by central differences."""

    def __init__(self, plan, dtype, input_size, hidden, params, grads):
        self.plan, self.input_size, self.hidden = plan, input_size, hidden
        self.params, self.grads = params, grads
        W, U, b = plan.split(params, input_size, hidden)
        self.named = plan.named(W, U, b, hidden)  # views: always the current values

    def _run(self, x, s0):
        state = (s0[0], s0[1]) if self.plan.n_states == 2 else s0[0]
        y, last = reference.forward(self.plan.variant, self.named, x, state)
        return y, np.stack(last if isinstance(last, tuple) else (last,))

    def forward(self, x, s0, keep):
        y, sT = self._run(x, s0)
        return y, sT, ()

    def backward(self, saved, dy, dsT):
        x, s0 = saved[0].copy(), saved[1].copy()

        def objective():
            y, sT = self._run(x, s0)
            return float((y * dy).sum() + (sT * dsT).sum())

        def central(a):
            return central_differences(objective, a, EPS)

        self.grads[:] = central(self.params)
        return central(x), central(s0)

    def params_changed(self):
        pass


class ReferenceBackend(Backend):
    name = "toy_reference"

    def layer(self, plan, dtype, input_size, hidden, params, grads):
        if dtype != "float64":
            raise ValueError("the reference backend computes in float64 only")
        return ReferenceLayer(plan, dtype, input_size, hidden, params, grads)


@pytest.fixture
def toy():
    backend = register(ReferenceBackend())
    yield backend
    unregister(backend.name)
    assert backend.name not in backends.backend_names()


@pytest.mark.parametrize("variant", ["gru", "lstm", "mgu"])
def test_a_registered_backend_runs_a_layer_like_the_cpu(toy, variant):
    rng = np.random.default_rng(0)
    ours = gruablate.RecurrentLayer(variant, 2, 3, seed=4, dtype="float64", backend=toy.name)
    cpu = gruablate.RecurrentLayer(variant, 2, 3, seed=4, dtype="float64")
    assert ours.backend == toy.name and isinstance(ours.impl, ReferenceLayer)
    np.testing.assert_array_equal(ours.flat_params, cpu.flat_params)
    x = rng.standard_normal((4, 2, 2))
    y, last = ours.forward(x)
    y_cpu, last_cpu = cpu.forward(x)
    np.testing.assert_allclose(y, y_cpu, rtol=0, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, _, grads = ours.backward(dy)
    dx_cpu, _, grads_cpu = cpu.backward(dy)
    np.testing.assert_allclose(dx, dx_cpu, rtol=0, atol=1e-7)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_cpu[name], rtol=0, atol=1e-7,
                                   err_msg=name)
    moved = cpu.to(toy.name)
    np.testing.assert_allclose(moved.forward(x)[0], y_cpu, rtol=0, atol=1e-12)


def test_a_registered_backend_trains_a_model_like_the_cpu(toy):
    def make(backend):
        return Model("gru", input_size=3, hidden=3, output_size=2, tokens=True, seed=1,
                     dtype="float64", backend=backend)

    ours, cpu = make(toy.name), make("cpu")
    assert ours.backend == toy.name and get_backend(ours.backend) is toy
    opt, opt_cpu = toy.optimiser(ours, 0.05), get_backend("cpu").optimiser(cpu, 0.05)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x, y = rng.integers(0, 3, (4, 2)), rng.integers(0, 2, (4, 2))
        for model, o in ((ours, opt), (cpu, opt_cpu)):
            model.forward(x, y)
            model.backward()
            o.step()
            model.params_changed()
    for (p, _), (q, _) in zip(ours.buffers, cpu.buffers, strict=True):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-7)


def test_train_runs_through_a_registered_backend(toy):
    options = dict(hidden=2, steps=3, batch=2, seq_len=3, dtype="float64", eval_every=3)
    ours = train("gru", "adding", backend=toy.name, **options)
    cpu = train("gru", "adding", backend="cpu", **options)
    assert ours["status"] == "ok", ours["error"]
    assert ours["backend"] == toy.name
    assert ours["metric"] == pytest.approx(cpu["metric"], rel=1e-6)


def test_the_registry_refuses_bad_backends_with_one_line(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(ReferenceBackend())
    with pytest.raises(ValueError, match="must be a gruablate.backends.Backend"):
        register(object())  # type: ignore[arg-type]

    class BadName(ReferenceBackend):
        name = "../evil"

    with pytest.raises(ValueError, match="name must match"):
        register(BadName())
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister("cpu")
    with pytest.raises(ValueError, match=r"backend must be one of cpu, cuda, toy_reference"):
        gruablate.RecurrentLayer("gru", 2, 3, backend="tpu")
    with pytest.raises(ValueError, match="is not registered"):
        gruablate.RecurrentLayer("gru", 2, 3, dtype="float64", backend=ReferenceBackend())
    with pytest.raises(ValueError, match="generates no kernel source"):
        toy.kernel_source(gruablate.get_variant("gru"), "float64")


def test_an_unavailable_backend_is_refused_before_work(toy):
    class Absent(ReferenceBackend):
        name = "toy_absent"

        def unavailable(self):
            return "toy_absent needs a device this machine lacks"

    absent = register(Absent())
    try:
        assert not absent.available()
        with pytest.raises(ValueError, match="needs a device this machine lacks"):
            gruablate.RecurrentLayer("gru", 2, 3, dtype="float64", backend="toy_absent")
        with pytest.raises(ValueError, match="needs a device this machine lacks"):
            train("gru", "adding", backend="toy_absent", hidden=2, steps=1, seq_len=3)
    finally:
        unregister("toy_absent")


@pytest.mark.parametrize("old, new", [
    ("gruablate.spec", "gruablate.cells.spec"),
    ("gruablate.kernels.reference", "gruablate.cells.reference"),
    ("gruablate.kernels.cpu", "gruablate.backends.cpu.kernels"),
    ("gruablate.cuda_model", "gruablate.backends.cuda.model"),
])
def test_old_module_paths_still_import_and_say_where_they_went(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
