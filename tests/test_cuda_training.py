"""Device-resident CUDA training (``backends/cuda/model.py`` and ``optim.py``).

Checked without a GPU, like ``tests/test_cuda.py``:

1. **Real compiler.** Every training kernel (encoding, readout bias, the three losses,
   the reductions, Adam) compiled by NVVM to PTX for ``sm_90`` in both dtypes: no local
   memory, no atomics.
2. **Simulator** (``NUMBA_ENABLE_CUDASIM=1``, in subprocesses: this file is also their
   script). ``gruablate.train(..., backend="cuda", dtype="float64")`` against the CPU
   backend for gru, lstm and mingru on the adding (real inputs, MSE, last step) and copy
   (symbols, cross-entropy, every step) tasks, with clipping, warm-up and decay active:
   the curve and the metrics agree to 1e-8 relative. A step-by-step run beside a CPU
   model, carrying the state over and evaluating between steps, covers the Bernoulli
   loss too and compares the parameters after the steps.
3. **No per-step host traffic.** In that run every host transfer is recorded: a step
   may upload only its inputs and targets and download only the loss and the gradient
   norm (one scalar each); the layers' host-parameter upload must not run, and the
   host parameters stay as they were until ``sync_to_host()``.
4. **Unavailability.** ``backend="cuda"`` without a GPU still raises the one-line
   ``CudaUnavailableError``.
5. **On a GPU** (skipped elsewhere; ``benchmarks/gpu.sh`` runs them): the training
   comparison and the step-by-step run of 2 and 3, transfers recorded, on the device.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _cudasim import gpu_present, simulate  # tests/ is on sys.path

import gruablate
from gruablate.model import Model

# Minutes of compiling (simulated device training): left out of
# the quick subset.
pytestmark = pytest.mark.slow

RTOL = 1e-8  # float64 CPU vs device: only the summation order differs
# A PTX atomic instruction (``atom.*``, or ``red.*`` when the result is unused),
# predicated or not.
ATOMIC = re.compile(r"^\s*(@!?%p\d+\s+)?(atom|red)\.", re.M)

# Tiny tasks (T = 3) and evaluation splits cut to 5 examples: the simulator runs every
# CUDA thread as a Python thread.
TASKS = {
    "adding": dict(seq_len=3),
    "copy": dict(delay=1, symbols=1, alphabet=2),
}
TRAIN_KW = dict(hidden=4, batch=3, steps=3, seed=1, dtype="float64", lr=0.05, clip=0.5,
                warmup=1, decay="cosine", eval_every=2)
VARIANTS = ("gru", "lstm", "mingru")
# (variant, layers, readout, loss, tokens) of the step-by-step runs: every loss and
# readout, stacked layers, the scan path and the LSTM's two-part state.
STEP_CASES = (
    ("gru", 2, "every", "bernoulli", False),
    ("lstm", 1, "last", "ce", True),
    ("mingru", 1, "every", "mse", False),
    # A cell written as equations (kernels printed from its graph): Greff's full gate
    # recurrence, five states carried between steps and between calls, stacked.
    ("lstm_fgr", 2, "every", "mse", False),
)


def _variant(name: str) -> str | gruablate.Variant:
    """A built-in by name, or a cell of tests/test_equations.py as an equations spec."""
    from test_equations import CELLS  # tests/ is on sys.path

    if name in CELLS:
        return gruablate.Variant.from_dict({"name": name, "equations": list(CELLS[name][0])})
    return name


# --------------------------------------------------------------- 1. real compiler


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_kernels_compile_to_ptx(real_cuda, dtype):
    from gruablate.backends.cuda.train_kernels import TRAIN_KERNELS, compile_train_ptx

    ptx = compile_train_ptx(dtype, cc=(9, 0))
    assert sorted(ptx) == sorted(TRAIN_KERNELS)
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert name in text, name
        assert ".local" not in text, f"{name} uses local memory"
        # Reductions go through shared memory and partial sums, never atomics.
        assert not ATOMIC.search(text), f"{name} uses atomics"
    # The float32 module keeps its losses and sums in float64 (as the host model does).
    if dtype == "float32":
        assert ".f64" in ptx["loss_ce"] and ".f64" in ptx["sumsq_partial"]


# ------------------------------------------------------------------- 2. simulator
@pytest.mark.parametrize("task", sorted(TASKS))
def test_simulated_training_matches_cpu(task):
    report = simulate(__file__, "--train", task)
    assert report["ran"] == [f"{v} {task}" for v in VARIANTS]
    assert not report["bad"], "\n".join(report["bad"])


def test_simulated_steps_stay_on_the_device():
    report = simulate(__file__, "--steps")
    assert report["ran"] == [c[0] for c in STEP_CASES]
    assert not report["bad"], "\n".join(report["bad"])


# ------------------------------------------------------------ 4. no GPU: clear error
def test_clear_error_without_gpu(real_cuda):
    from gruablate.errors import CudaUnavailableError

    if real_cuda.is_available():
        pytest.skip("a GPU is present")
    for make in (
        lambda: gruablate.train("gru", "adding", backend="cuda", hidden=4, steps=1, seq_len=3),
        lambda: Model("gru", input_size=2, hidden=4, output_size=1, backend="cuda"),
    ):
        with pytest.raises(CudaUnavailableError, match=r"^backend='cuda' needs an NVIDIA GPU"
                           ) as e:
            make()
        assert "\n" not in str(e.value)


def test_device_adam_refuses_a_cpu_model():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    from gruablate.backends.cuda.optim import DeviceAdam

    model = Model("gru", input_size=2, hidden=4, output_size=1)
    with pytest.raises(ValueError, match="backend='cuda'"):
        DeviceAdam(model.runner, 1e-3)


# --------------------------------------------------------------------- 5. real GPU
gpu_only = pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU here")


@gpu_only
@pytest.mark.parametrize("task", sorted(TASKS))
def test_gpu_training_matches_cpu(task, monkeypatch):
    """The simulator's training comparison, run on the GPU."""
    _small_splits(monkeypatch.setitem)
    ran, bad = _train_vs_cpu(task)
    assert ran == [f"{v} {task}" for v in VARIANTS]
    assert not bad, "\n".join(bad)


@gpu_only
def test_gpu_steps_stay_on_the_device(monkeypatch):
    """The step-by-step run with every host transfer recorded, on the GPU."""
    ran, bad = _steps_on_device(monkeypatch.setattr)
    assert ran == [c[0] for c in STEP_CASES]
    assert not bad, "\n".join(bad)


# -------------------------------------------------------- subprocess entry points
def _close(what: str, got: float, ref: float, bad: list[str]) -> None:
    if not (math.isfinite(got) and abs(got - ref) <= RTOL * max(abs(ref), 1e-12)):
        bad.append(f"{what}: {got!r} against the CPU's {ref!r}")


def _small_splits(setitem: Callable[[dict, str, int], None]) -> None:
    """Evaluation splits of 5 examples for the tasks of :data:`TASKS`."""
    from gruablate.tasks import adding, copy

    for mod in (adding, copy):
        for split in ("val", "test"):
            setitem(mod._SPLIT_SIZES, split, 5)


def _train_vs_cpu(task: str) -> tuple[list[str], list[str]]:
    ran, bad = [], []
    for variant in VARIANTS:
        kw = dict(TRAIN_KW, layers=2 if variant == "gru" else 1, **TASKS[task])
        cpu = gruablate.train(variant, task, backend="cpu", **kw)
        dev = gruablate.train(variant, task, backend="cuda", **kw)
        tag = f"{variant} {task}"
        ran.append(tag)
        if cpu["status"] != "ok" or dev["status"] != "ok":
            bad.append(f"{tag}: status {dev['status']} ({dev['error']}), cpu {cpu['status']}")
            continue
        if len(cpu["curve"]) != len(dev["curve"]):
            bad.append(f"{tag}: curve of {len(dev['curve'])} points, cpu {len(cpu['curve'])}")
            continue
        for a, b in zip(dev["curve"], cpu["curve"], strict=True):
            for key in ("train_loss", "val_metric"):
                _close(f"{tag} step {b['step']} {key}", a[key], b[key], bad)
        for key, ref in cpu["test_metrics"].items():
            _close(f"{tag} test {key}", dev["test_metrics"][key], ref, bad)
    return ran, bad


class _Transfers:
    """Records every host <-> device copy of device arrays (the simulator's or the GPU's).

    ``patch(obj, name, value)`` installs the recording methods (``setattr`` in a
    subprocess, pytest's ``monkeypatch.setattr`` in-process, so they are undone)."""

    def __init__(self, patch: Callable[[Any, str, Any], None] = setattr) -> None:
        from gruablate.backends.cuda.device import simulator_enabled

        if simulator_enabled():
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as cls
        else:
            from numba.cuda.cudadrv.devicearray import DeviceNDArrayBase as cls

        self.up: list[int] = []
        self.down: list[int] = []
        log = self
        to_host, to_device = cls.copy_to_host, cls.copy_to_device

        def copy_to_host(arr, ary=None, stream=0):
            log.down.append(int(arr.size))
            return to_host(arr, ary, stream)

        def copy_to_device(arr, ary, stream=0):
            if not isinstance(ary, cls):  # device to device copies are no traffic
                log.up.append(int(np.asarray(ary).size))
            return to_device(arr, ary, stream)

        patch(cls, "copy_to_host", copy_to_host)
        patch(cls, "copy_to_device", copy_to_device)

    def clear(self) -> None:
        self.up.clear()
        self.down.clear()


def _steps_on_device(
    patch: Callable[[Any, str, Any], None] = setattr,
) -> tuple[list[str], list[str]]:
    from gruablate.backends.cuda.layer import CudaLayer
    from gruablate.backends.cuda.optim import DeviceAdam
    from gruablate.model import Model
    from gruablate.optim import Adam

    transfers = _Transfers(patch)
    uploads_of_params = []
    original_params_changed = CudaLayer.params_changed

    def params_changed(self):
        uploads_of_params.append(self)
        original_params_changed(self)

    patch(CudaLayer, "params_changed", params_changed)
    T, B, I, H, O = 3, 3, 3, 4, 2
    ran, bad = [], []
    for variant, layers, readout, loss, tokens in STEP_CASES:
        def make(backend, variant=variant, layers=layers, readout=readout, loss=loss,
                 tokens=tokens):
            return Model(_variant(variant), input_size=I, hidden=H, output_size=O, layers=layers,
                         tokens=tokens, readout=readout, loss=loss, seed=2, dtype="float64",
                         backend=backend)

        cpu, dev = make("cpu"), make("cuda")
        opts = dict(clip=0.5, warmup=1, decay="linear", total_steps=3)
        opt_cpu, opt_dev = Adam(cpu.buffers, 0.05, **opts), DeviceAdam(dev.runner, 0.05, **opts)
        start = [p.copy() for p, _ in dev.buffers]
        rng = np.random.default_rng(3)
        s_cpu = s_dev = None
        uploads_of_params.clear()
        for step in range(3):
            x = rng.integers(0, I, (T, B)) if tokens else rng.standard_normal((T, B, I))
            shape = (T, B) if readout == "every" else (B,)
            if loss == "ce":
                y = rng.integers(0, O, shape)
            elif loss == "mse":
                y = rng.standard_normal((*shape, O))
            else:
                y = (rng.random((*shape, O)) < 0.4).astype(float)
            transfers.clear()
            # The state is carried over, as truncated BPTT does.
            l_dev, s_dev = dev.forward(x, y, s_dev)
            dev.backward()
            n_dev = opt_dev.step()
            up, down = sorted(transfers.up), list(transfers.down)
            l_cpu, s_cpu = cpu.forward(x, y, s_cpu)
            cpu.backward()
            n_cpu = opt_cpu.step()
            cpu.params_changed()
            tag = f"{variant} step {step}"
            _close(f"{tag} loss", l_dev, l_cpu, bad)
            _close(f"{tag} gradient norm", n_dev, n_cpu, bad)
            if up != sorted([x.size, y.size]):
                bad.append(f"{tag}: uploads of {up} elements, want only x and y")
            if down != [1, 1]:
                bad.append(f"{tag}: downloads of {down} elements, want the loss and the norm")
            # An evaluation between steps (same batch size) must leave the carried state.
            z_dev, _ = dev.predict(x)
            z_cpu, _ = cpu.predict(x)
            err = float(np.max(np.abs(z_dev - z_cpu)))
            if not err <= RTOL * max(1.0, float(np.max(np.abs(z_cpu)))):
                bad.append(f"{tag}: predictions differ by {err:.3g}")
        if uploads_of_params:
            bad.append(f"{variant}: the host parameters were uploaded during training")
        if any(not np.array_equal(p, q) for (p, _), q in zip(dev.buffers, start, strict=True)):
            bad.append(f"{variant}: the host parameters changed before sync_to_host()")
        dev.sync_to_host()
        for k, ((p, _), (q, _)) in enumerate(zip(dev.buffers, cpu.buffers, strict=True)):
            err = float(np.max(np.abs(p - q)))
            if not err <= RTOL * max(1.0, float(np.max(np.abs(q)))):
                bad.append(f"{variant}: parameters of buffer {k} differ by {err:.3g}")
        if all(np.array_equal(p, q) for (p, _), q in zip(dev.buffers, start, strict=True)):
            bad.append(f"{variant}: training did not change the parameters")
        ran.append(variant)
    return ran, bad


def _main(argv: list[str]) -> int:
    """``--train TASK`` or ``--steps``: run in the simulator, print one JSON line."""
    # See tests/test_cuda.py: a short GIL switch interval makes the simulator faster.
    sys.setswitchinterval(5e-5)
    from _cudasim import lock_simulator_shared_arrays  # tests/ is sys.path[0] here

    lock_simulator_shared_arrays()
    if argv[:1] == ["--train"] and len(argv) == 2:
        _small_splits(dict.__setitem__)
        ran, bad = _train_vs_cpu(argv[1])
    elif argv == ["--steps"]:
        ran, bad = _steps_on_device()
    else:
        print("usage: test_cuda_training.py --train TASK | --steps", file=sys.stderr)
        return 2
    print(json.dumps({"ran": ran, "bad": bad}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
