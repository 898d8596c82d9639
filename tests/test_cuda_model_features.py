"""Dropout, zoneout, bidirectional layers and sequence lengths in the CUDA model runner
(``backends/cuda/model.py``), against the host runner (``backends/host.py``), their
specification.

Checked without a GPU, like ``tests/test_cuda_training.py``:

1. **Real compiler.** The runner's glue kernel (``copy_steps``: time reversal, masks,
   column offsets, the sum of the two directions' input gradients, zeros past each
   row's length) and ``clear_padding`` (the loss of the padded positions) compiled by
   NVVM to PTX for ``sm_90`` in both dtypes: no local memory, no atomics.
2. **Simulator** (``NUMBA_ENABLE_CUDASIM=1``, in subprocesses: this file is also their
   script). A ``backend="cuda"`` model and a CPU model built with the same arguments
   and seed, for dropout (two layers), zoneout and bidirectional layers, each with
   ``readout="every"`` / cross-entropy, and all three together with that and with
   ``"last"`` / MSE, in float64 (float32: the cases with all three features,
   :data:`SIMULATED_FLOAT32`): the same loss, last states and gradients of every buffer over
   two forward/backward steps (new masks each), and the same predictions and last
   states at evaluation. Both runners draw the same masks: each calls ``Model.masks``
   once per forward or predict, so the two mask generators end in the same state.
   Then a few steps of the device Adam against the host Adam with all three on.
   **With sequence lengths** (a padded batch, rows of lengths 5, 2 and 1, the padding
   of the inputs 99 and of the targets out of range or NaN: never read), the same
   comparisons for one layer (last / MSE), two layers (every / CE), all three features
   (last / CE), an LSTM (bidirectional, every / Bernoulli) and a bidirectional zoneout
   one (every / MSE, symbols), and three device Adam steps with lengths.
3. **On a GPU** (skipped elsewhere): the same comparisons in-process, on the device.
4. **The refusal is gone**: ``check_model_options`` takes all three for
   ``backend="cuda"`` (no GPU needed: it is asked before any layer is built), and
   ``check_config`` a variable-length task.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
from _cudasim import gpu_present, simulate  # tests/ is on sys.path

from gruablate.backends import get_backend
from gruablate.model import check_model_options
from gruablate.train import check_config

# float64: only the summation order differs; float32: its rounding on top.
RTOL = {"float64": 1e-10, "float32": 1e-4}
ATOMIC = re.compile(r"^\s*(@!?%p\d+\s+)?(atom|red)\.", re.M)
T, B, I, H, O = 5, 3, 3, 4, 2
ALL = dict(layers=2, dropout=0.3, zoneout=0.25, bidirectional=True)
# (name, variant, model options, readout, loss, tokens)
CASES = (
    ("dropout every", "gru", dict(layers=2, dropout=0.3), "every", "ce", False),
    ("zoneout every", "gru", dict(zoneout=0.25), "every", "ce", False),
    ("bidirectional every", "gru", dict(bidirectional=True), "every", "ce", True),
    # the LSTM's two-part state through both directions and zoneout; the last-step
    # readout with each feature, all at once
    ("all every", "lstm", ALL, "every", "ce", False),
    ("all last", "gru", ALL, "last", "mse", False),
)
LENGTHS = np.array([5, 2, 1])
# The simulator's float32 runs take the cases with every feature at once: the runner's
# glue is one printed source for both dtypes (only the element type differs), so the
# float64 runs of every case check the logic and these the float32 spelling; a GPU runs
# every case in both dtypes.
# (name, variant, model options, readout, loss, tokens), each run with LENGTHS
LENGTH_CASES = (
    ("lengths one layer last", "gru", {}, "last", "mse", False),
    ("lengths two layers every", "gru", dict(layers=2), "every", "ce", False),
    ("lengths all last", "gru", ALL, "last", "ce", False),
    ("lengths lstm every", "lstm", dict(layers=2, bidirectional=True), "every",
     "bernoulli", False),
    ("lengths bidirectional zoneout every", "gru", dict(bidirectional=True, zoneout=0.25),
     "every", "mse", True),
)
SIMULATED_FLOAT32 = ("all every", "all last", "lengths all last", "lengths lstm every")


def _cases(cases: tuple, dtype: str, simulated: bool) -> tuple:
    """The cases a run of ``dtype`` compares (see :data:`SIMULATED_FLOAT32`)."""
    if simulated and dtype == "float32":
        return tuple(c for c in cases if c[0] in SIMULATED_FLOAT32)
    return cases


# --------------------------------------------------------------- 1. real compiler


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_runner_glue_kernel_compiles_to_ptx(real_cuda, dtype):
    from gruablate.backends.cuda.kernels import module_ptx
    from gruablate.backends.cuda.source import DEFAULT_GEOMETRY
    from gruablate.backends.cuda.train_kernels import TRAIN_KERNELS, train_kernels
    from gruablate.backends.cuda.train_source import train_signatures

    new = ("copy_steps", "clear_padding")
    assert set(new) <= set(TRAIN_KERNELS)  # so test_cuda_training's PTX test has it too
    ptx = module_ptx(real_cuda, train_kernels(dtype, DEFAULT_GEOMETRY), new,
                     train_signatures(dtype), (9, 0))
    for name in new:
        text = ptx[name]
        assert ".target sm_90" in text and name in text, name
        assert ".local" not in text, f"{name} uses local memory"
        assert not ATOMIC.search(text), f"{name} uses atomics"


# --------------------------------------------------------------------- 4. options
def test_the_cuda_runner_takes_every_feature():
    cuda = get_backend("cuda")
    assert {"dropout", "zoneout", "bidirectional"} <= cuda.runner_features()
    assert check_model_options(cuda, 2, 0.3, 0.25, True) == (0.3, 0.25, True)


def test_the_cuda_runner_takes_sequence_lengths():
    assert "lengths" in get_backend("cuda").runner_features()
    config = check_config("gru", "adding", backend="cuda", require_device=False, seq_len=8,
                          min_len=3, hidden=4, steps=2, batch=4)
    assert config.backend == "cuda"


# ------------------------------------------------------------------- 2. simulator
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_simulated_runner_matches_the_host_runner(dtype):
    report = simulate(__file__, "--compare", dtype, timeout=1500)
    assert report["ran"] == [c[0] for c in _cases(CASES, dtype, True)]
    assert not report["bad"], "\n".join(report["bad"])


@pytest.mark.slow
def test_simulated_training_with_every_feature_matches_cpu():
    report = simulate(__file__, "--train", timeout=1500)
    assert report["ran"] == ["train"]
    assert not report["bad"], "\n".join(report["bad"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_simulated_runner_with_lengths_matches_the_host_runner(dtype):
    report = simulate(__file__, "--lengths", dtype, timeout=1500)
    assert report["ran"] == [c[0] for c in _cases(LENGTH_CASES, dtype, True)]
    assert not report["bad"], "\n".join(report["bad"])


@pytest.mark.slow
def test_simulated_training_with_lengths_matches_cpu():
    report = simulate(__file__, "--train-lengths", timeout=1500)
    assert report["ran"] == ["train with lengths"]
    assert not report["bad"], "\n".join(report["bad"])


# --------------------------------------------------------------------- 3. real GPU
gpu_only = pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU here")


@gpu_only
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpu_runner_matches_the_host_runner(dtype):
    ran, bad = _compare(dtype)
    assert ran == [c[0] for c in CASES]
    assert not bad, "\n".join(bad)


@gpu_only
def test_gpu_training_with_every_feature_matches_cpu():
    ran, bad = _train()
    assert ran == ["train"]
    assert not bad, "\n".join(bad)


@gpu_only
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpu_runner_with_lengths_matches_the_host_runner(dtype):
    ran, bad = _compare(dtype, LENGTH_CASES, LENGTHS)
    assert ran == [c[0] for c in LENGTH_CASES]
    assert not bad, "\n".join(bad)


@gpu_only
def test_gpu_training_with_lengths_matches_cpu():
    ran, bad = _train_lengths()
    assert ran == ["train with lengths"]
    assert not bad, "\n".join(bad)


# -------------------------------------------------------- subprocess entry points
def _close(what: str, got, ref, rtol: float, bad: list[str]) -> None:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        bad.append(f"{what}: shape {got.shape} against the CPU's {ref.shape}")
        return
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if not (math.isfinite(err) and err <= rtol * scale):
        bad.append(f"{what}: differs by {err:.3g} (scale {scale:.3g})")


def _host_state(s, B: int, H: int):
    """A device runner's last state (a flat device array) as the host's ``h`` or tuple."""
    a = s.copy_to_host().reshape(-1, B, H)
    return a[0] if a.shape[0] == 1 else tuple(a)


def _count_masks(model) -> list[int]:
    """Count the model's ``masks`` calls (an instance attribute shadows the method)."""
    calls = [0]
    method = model.masks

    def masks(*args, **kwargs):
        calls[0] += 1
        return method(*args, **kwargs)

    model.masks = masks
    return calls


def _batch(rng, readout: str, loss: str, tokens: bool, lengths=None):
    x = rng.integers(0, I, (T, B)) if tokens else rng.standard_normal((T, B, I))
    shape = (T, B) if readout == "every" else (B,)
    if loss == "ce":
        y = rng.integers(0, O, shape)
    elif loss == "bernoulli":
        y = (rng.random((*shape, O)) < 0.5).astype(np.float64)
    else:
        y = rng.standard_normal((*shape, O))
    if lengths is not None:  # the padding: values no runner may read
        pad = np.arange(T)[:, None] >= lengths[None, :]
        if not tokens:
            x[pad] = 99.0
        if readout == "every":
            y[pad] = O + 5 if loss == "ce" else np.nan
    return x, y


def _compare(dtype: str, cases=CASES, lengths=None) -> tuple[list[str], list[str]]:
    """Each of ``cases`` on the device and the CPU, with ``lengths`` if given."""
    from gruablate.model import Model

    rtol = RTOL[dtype]
    ran, bad = [], []
    for name, variant, opts, readout, loss, tokens in cases:
        def make(backend, variant=variant, opts=opts, readout=readout, loss=loss,
                 tokens=tokens):
            return Model(variant, input_size=I, hidden=H, output_size=O, tokens=tokens,
                         readout=readout, loss=loss, seed=4, dtype=dtype, backend=backend,
                         **opts)

        cpu, dev = make("cpu"), make("cuda")
        calls = _count_masks(dev)
        rng = np.random.default_rng(7)
        for step in range(2):  # new masks each step, drawn in the same order
            tag = f"{name} step {step}"
            x, y = _batch(rng, readout, loss, tokens, lengths)
            calls[0] = 0
            l_dev, s_dev = dev.forward(x, y, lengths=lengths)
            if calls[0] != 1:
                bad.append(f"{tag}: Model.masks called {calls[0]} times in a forward")
            l_cpu, s_cpu = cpu.forward(x, y, lengths=lengths)
            _close(f"{tag} loss", l_dev, l_cpu, rtol, bad)
            for k, (a, b) in enumerate(zip(s_dev, s_cpu, strict=True)):
                _close(f"{tag} last state {k}", _host_state(a, B, H), b, rtol, bad)
            dev.backward()
            cpu.backward()
            for k, ((_, g_dev), (_, g_cpu)) in enumerate(
                    zip(dev.runner.device_buffers, cpu.buffers, strict=True)):
                _close(f"{tag} gradient of buffer {k}", g_dev.copy_to_host(), g_cpu, rtol,
                       bad)
        states = [None if m.mask_rng is None else m.mask_rng.bit_generator.state
                  for m in (cpu, dev)]
        if states[0] != states[1]:
            bad.append(f"{name}: the mask generators drew differently")
        x, _ = _batch(rng, readout, loss, tokens, lengths)
        calls[0] = 0
        z_dev, last_dev = dev.predict(x, lengths=lengths)
        if calls[0] != 1:
            bad.append(f"{name}: Model.masks called {calls[0]} times in a predict")
        z_cpu, last_cpu = cpu.predict(x, lengths=lengths)
        _close(f"{name} predictions", z_dev, z_cpu, rtol, bad)
        for k, (a, b) in enumerate(zip(last_dev, last_cpu, strict=True)):
            _close(f"{name} predict last state {k}", a, b, rtol, bad)
        ran.append(name)
    return ran, bad


def _train() -> tuple[list[str], list[str]]:
    """Three steps of the device Adam beside the host Adam, every feature on, the state
    carried over and an evaluation between steps."""
    from gruablate.backends.cuda.optim import DeviceAdam
    from gruablate.model import Model
    from gruablate.optim import Adam

    rtol = RTOL["float64"]

    def make(backend):
        return Model("gru", input_size=I, hidden=H, output_size=O, readout="last",
                     loss="mse", seed=6, dtype="float64", backend=backend, **ALL)

    cpu, dev = make("cpu"), make("cuda")
    opts = dict(clip=0.5, warmup=1, decay="linear", total_steps=3)
    opt_cpu, opt_dev = Adam(cpu.buffers, 0.05, **opts), DeviceAdam(dev.runner, 0.05, **opts)
    rng = np.random.default_rng(8)
    bad: list[str] = []
    s_cpu = s_dev = None
    for step in range(3):
        x, y = _batch(rng, "last", "mse", False)
        l_dev, s_dev = dev.forward(x, y, s_dev)
        dev.backward()
        n_dev = opt_dev.step()
        l_cpu, s_cpu = cpu.forward(x, y, s_cpu)
        cpu.backward()
        n_cpu = opt_cpu.step()
        cpu.params_changed()
        _close(f"step {step} loss", l_dev, l_cpu, rtol, bad)
        _close(f"step {step} gradient norm", n_dev, n_cpu, rtol, bad)
        _close(f"step {step} predictions", dev.predict(x)[0], cpu.predict(x)[0], rtol, bad)
    dev.sync_to_host()
    for k, ((p, _), (q, _)) in enumerate(zip(dev.buffers, cpu.buffers, strict=True)):
        _close(f"parameters of buffer {k}", p, q, rtol, bad)
    # After sync_to_host the layers' plain kernels hold the trained parameters too.
    layer = dev.layers[0]
    x = rng.standard_normal((T, B, I))
    _close("a trained layer run alone", layer.forward(x, keep=False)[0],
           cpu.layers[0].forward(x, keep=False)[0], rtol, bad)
    return ["train"], bad


def _train_lengths() -> tuple[list[str], list[str]]:
    """Three steps of the device Adam beside the host Adam on padded batches (new lengths
    each step), every feature on, an every-step readout, an evaluation between steps."""
    from gruablate.backends.cuda.optim import DeviceAdam
    from gruablate.model import Model
    from gruablate.optim import Adam

    rtol = RTOL["float64"]

    def make(backend):
        return Model("gru", input_size=I, hidden=H, output_size=O, readout="every",
                     loss="ce", seed=5, dtype="float64", backend=backend, **ALL)

    cpu, dev = make("cpu"), make("cuda")
    opts = dict(clip=0.5, warmup=1, decay="linear", total_steps=3)
    opt_cpu, opt_dev = Adam(cpu.buffers, 0.05, **opts), DeviceAdam(dev.runner, 0.05, **opts)
    rng = np.random.default_rng(9)
    bad: list[str] = []
    for step, lengths in enumerate((LENGTHS, np.array([3, 5, 4]), np.array([1, 1, 5]))):
        x, y = _batch(rng, "every", "ce", False, lengths)
        l_dev, _ = dev.forward(x, y, lengths=lengths)
        dev.backward()
        n_dev = opt_dev.step()
        l_cpu, _ = cpu.forward(x, y, lengths=lengths)
        cpu.backward()
        n_cpu = opt_cpu.step()
        cpu.params_changed()
        _close(f"step {step} loss", l_dev, l_cpu, rtol, bad)
        _close(f"step {step} gradient norm", n_dev, n_cpu, rtol, bad)
        z_dev, last_dev = dev.predict(x, lengths=lengths)
        z_cpu, last_cpu = cpu.predict(x, lengths=lengths)
        _close(f"step {step} predictions", z_dev, z_cpu, rtol, bad)
        for k, (a, b) in enumerate(zip(last_dev, last_cpu, strict=True)):
            _close(f"step {step} predict last state {k}", a, b, rtol, bad)
    dev.sync_to_host()
    for k, ((p, _), (q, _)) in enumerate(zip(dev.buffers, cpu.buffers, strict=True)):
        _close(f"parameters of buffer {k}", p, q, rtol, bad)
    return ["train with lengths"], bad


def _main(argv: list[str]) -> int:
    """``--compare DTYPE`` or ``--train``: run in the simulator, print one JSON line."""
    sys.setswitchinterval(5e-5)  # see tests/test_cuda.py: a faster simulator
    from _cudasim import lock_simulator_shared_arrays  # tests/ is sys.path[0] here

    lock_simulator_shared_arrays()
    if argv[:1] == ["--compare"] and len(argv) == 2:
        ran, bad = _compare(argv[1], _cases(CASES, argv[1], True))
    elif argv[:1] == ["--lengths"] and len(argv) == 2:
        ran, bad = _compare(argv[1], _cases(LENGTH_CASES, argv[1], True), LENGTHS)
    elif argv == ["--train"]:
        ran, bad = _train()
    elif argv == ["--train-lengths"]:
        ran, bad = _train_lengths()
    else:
        print("usage: test_cuda_model_features.py --compare DTYPE | --lengths DTYPE"
              " | --train | --train-lengths", file=sys.stderr)
        return 2
    print(json.dumps({"ran": ran, "bad": bad}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
