"""What training refuses up front, and what it records instead of losing: the checks of
``check_config``, the explosion rule, Ctrl-C, a record that cannot be written, the
layer's own copies of what backward reads, and the spec's name and bias rules."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from gruablate import RecurrentLayer
from gruablate.cells.spec import SpecError, Variant
from gruablate.cli import main
from gruablate.model import Model
from gruablate.optim import Adam
from gruablate.study import Study, StudyError
from gruablate.train import EXPLODED_FACTOR, MAX_LAYERS, check_config, train

# The module (``gruablate.train`` the attribute is the function, re-exported).
train_module = importlib.import_module("gruablate.train")

SMALL = dict(hidden=4, steps=3, seq_len=10)


# ------------------------------------------------------------------ check_config
@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=float("inf")), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(clip=float("inf")), "clip must be a finite number"),
    (dict(warmup=4), "warmup (4 steps) is longer than the run (3 steps)"),
    (dict(layers=MAX_LAYERS + 1), f"layers must be at most {MAX_LAYERS}"),
    (dict(hidden=50_000), "GiB of memory"),
    (dict(batch=10**8), "GiB of memory"),
    (dict(dtype="float16"), "dtype must be one of float32, float64"),
    (dict(decay="exp"), "decay must be one of"),
    (dict(seq_len=10**9), "seq_len must be at most 10000"),
])
def test_check_config_refuses_before_any_work(kwargs, message):
    with pytest.raises(ValueError) as info:
        check_config("gru", "adding", **{**SMALL, **kwargs})
    assert message in str(info.value)


def test_numpy_dtypes_are_accepted_where_names_are():
    assert check_config("gru", "adding", dtype=np.float64, **SMALL).dtype == "float64"
    assert RecurrentLayer("gru", 2, 3, dtype=np.float64).dtype == "float64"
    assert Model("gru", input_size=2, hidden=3, output_size=1,
                 dtype=np.dtype("float64")).dtype == "float64"
    record = train("gru", "adding", dtype=np.float64, **SMALL)
    assert record["status"] == "ok" and record["dtype"] == "float64"


def test_cuda_without_a_gpu_is_refused_by_train_but_not_by_a_study(monkeypatch):
    from gruablate.backends.cuda import device
    from gruablate.errors import CudaUnavailableError

    def no_gpu():
        raise CudaUnavailableError("backend='cuda' needs an NVIDIA GPU (test)")

    monkeypatch.setattr(device, "require_cuda", no_gpu)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        check_config("gru", "adding", backend="cuda", **SMALL)
    check_config("gru", "adding", backend="cuda", require_device=False, **SMALL)
    result = CliRunner().invoke(main, ["run", "train", "--backend", "cuda", "--steps", "2"])
    assert result.exit_code == 2 and "needs an NVIDIA GPU" in result.output


def test_a_study_checks_every_cell_configuration_before_the_first_runs():
    with pytest.raises(StudyError, match="layers must be at most 64"):
        Study.from_dict({"variants": ["gru"], "tasks": ["adding"], "layers": [1, 65]})
    with pytest.raises(StudyError, match="GiB of memory"):
        Study.from_dict({"variants": ["gru", "lstm"], "tasks": ["adding"],
                         "hidden_by_variant": {"lstm": [60_000]}})


# ------------------------------------------------------------------ explosions
def test_a_finite_explosion_is_recorded_as_diverged():
    record = train("gru", "adding", hidden=4, steps=20, lr=1e4, clip=None, seq_len=10)
    assert record["status"] == "diverged"
    assert "training exploded" in record["error"]
    assert record["test_metrics"]["mse"] > EXPLODED_FACTOR * record["baseline"]
    assert np.isnan(record["metric"])


def test_an_ordinary_bad_run_is_not_an_explosion():
    record = train("gru", "adding", hidden=4, steps=2, lr=1e-3, seq_len=10)
    assert record["status"] == "ok"  # no better than the baseline, but not exploded
    assert record["metric"] < EXPLODED_FACTOR * record["baseline"]


# ------------------------------------------------------------------ run train CLI
def _interrupt_at_step(monkeypatch, n):
    real = Adam.step
    calls = {"n": 0}

    def step(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Adam, "step", step)


def test_ctrl_c_in_train_keeps_the_record(monkeypatch):
    _interrupt_at_step(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt) as info:
        train("gru", "adding", hidden=4, steps=10, seq_len=10)
    record = info.value.record
    assert record["status"] == "interrupted" and record["steps_done"] == 3
    assert "interrupted after 3 of 10 steps" in record["error"]


def test_ctrl_c_in_run_train_writes_an_interrupted_record(tmp_path, monkeypatch):
    _interrupt_at_step(monkeypatch, 4)
    result = CliRunner().invoke(main, ["run", "train", "--steps", "10", "--hidden", "4",
                                       "--seq-len", "10", "--no-progress",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "interrupted" and record["steps_done"] == 3


def test_a_record_that_cannot_be_written_is_printed_not_lost(tmp_path, monkeypatch):
    def full_disk(record, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module, "write_record", full_disk)
    result = CliRunner().invoke(main, ["run", "train", "--steps", "2", "--hidden", "4",
                                       "--seq-len", "10", "--no-progress",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    first, *rest = result.output.splitlines()
    record = json.loads(first)
    assert record["status"] == "ok" and record["steps_done"] == 2
    assert any("No space left on device" in line and "printed above" in line for line in rest)


def test_run_train_says_when_it_compiles_and_when_it_learned_nothing(tmp_path, monkeypatch):
    import gruablate.backends.cpu.kernels as cpu

    monkeypatch.setattr(cpu, "kernels_compiled", lambda variant, dtype: False)
    result = CliRunner().invoke(main, ["run", "train", "--steps", "2", "--hidden", "4",
                                       "--seq-len", "10", "--no-progress",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "compiling kernels for gru (float32) on first use" in result.output
    assert "no better than the trivial baseline" in result.output
    assert (tmp_path / "r.json").is_file()


# ------------------------------------------------------------------ aliasing
def test_layer_backward_is_unchanged_by_a_caller_editing_x_and_y():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    dy = rng.standard_normal((5, 2, 4))
    clean = RecurrentLayer("gru", 3, 4, dtype="float64")
    clean.forward(x.copy())
    dx_clean, _, g = clean.backward(dy)
    g_clean = {k: v.copy() for k, v in g.items()}

    layer = RecurrentLayer("gru", 3, 4, dtype="float64")
    y, _ = layer.forward(x)
    x *= 7.0  # the caller reuses its buffers before backward
    y[:] = 0.0
    dx, _, grads = layer.backward(dy)
    np.testing.assert_array_equal(dx, dx_clean)
    for k in g_clean:
        np.testing.assert_array_equal(grads[k], g_clean[k])


def test_model_backward_is_unchanged_by_a_caller_editing_x():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 2))
    y = rng.standard_normal((6, 2, 1))
    ref = Model("gru", input_size=2, hidden=3, output_size=1, loss="mse", dtype="float64")
    ref.forward(x.copy(), y)
    ref.backward()
    model = Model("gru", input_size=2, hidden=3, output_size=1, loss="mse", dtype="float64")
    model.forward(x, y)
    x[:] = 0.0
    model.backward()
    for (_, g_ref), (_, g) in zip(ref.buffers, model.buffers, strict=True):
        np.testing.assert_array_equal(g, g_ref)


# ------------------------------------------------------------------ spec rules
@pytest.mark.parametrize("name", ["../x", "a/b", "a\nb", "", "-lead", "x" * 65, ".hidden"])
def test_unsafe_variant_names_are_refused_however_the_variant_is_built(name):
    with pytest.raises(SpecError, match="variant name"):
        Variant.from_dict({"name": name, "family": "gru"})
    with pytest.raises(SpecError, match="variant name"):
        Variant(name=name, family="gru")


@pytest.mark.parametrize("bias", [float("nan"), float("inf"), 1e300, -1e5, 10**400])
def test_forget_biases_that_cannot_be_stored_are_refused(bias):
    with pytest.raises(SpecError, match="forget_bias"):
        Variant.from_dict({"name": "mine", "family": "lstm", "forget_bias": bias})
