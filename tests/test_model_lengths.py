"""Sequence lengths in gruablate's own model, training loop, task, CLI and studies
(``Model.forward/predict(..., lengths)``, ``Batch.lengths``, the variable-length adding
problem ``make_task("adding", min_len=...)``).

Oracles: each row of a padded batch run alone, at its own length and without lengths,
through the same model (outputs, last states, the loss computed by hand from them);
every gradient against central finite differences in float64; the task's sequences
against the problem's definition (two marks, one in each half of the row's own length,
zeros past it, the target their sum).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import as_tuple, assert_model_gradients_match_finite_differences
from test_regularise import PlainRunner  # tests/ is on sys.path

import gruablate
from gruablate.backends import get_backend, register, unregister
from gruablate.cli import main
from gruablate.model import Model
from gruablate.study import Study
from gruablate.tasks import make_task
from gruablate.train import TIMING_KEYS, check_config

T, B, I, H, O = 6, 4, 3, 3, 2
LENGTHS = np.array([6, 2, 4, 1])


def _model(variant="gru", layers=1, readout="last", loss="mse", **kw):
    return Model(variant, input_size=I, hidden=H, output_size=O, layers=layers, seed=7,
                 dtype="float64", readout=readout, loss=loss, **kw)


def _data(readout="last", loss="mse", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I))
    x[np.arange(T)[:, None] >= LENGTHS[None, :]] = 99.0  # padding: never read
    shape = (T, B) if readout == "every" else (B,)
    y = rng.integers(0, O, shape) if loss == "ce" else rng.standard_normal((*shape, O))
    return x, y


def _alone(model, x):
    """Each row run alone over its own real steps, no lengths: (outputs, last states)."""
    return [model.predict(np.ascontiguousarray(x[:L, b:b + 1])) for b, L in
            enumerate(LENGTHS)]


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------- the model
@pytest.mark.parametrize("variant", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_padded_row_is_the_row_run_alone(variant, bidirectional):
    model = _model(variant, layers=2, bidirectional=bidirectional)
    x, y = _data()
    z, last = model.predict(x, None, LENGTHS)
    alone = _alone(model, x)
    for b, (zb, lb) in enumerate(alone):
        np.testing.assert_allclose(z[b], zb[0], rtol=1e-12, atol=1e-14)
        for got, want in zip(last, lb, strict=True):  # each layer and direction
            for g, w in zip(as_tuple(got), as_tuple(want), strict=True):  # h (and c)
                np.testing.assert_allclose(g[b], w[0], rtol=1e-12, atol=1e-14)
    # the loss: the mean over rows of each row's own prediction error
    loss, _ = model.forward(x, y, None, LENGTHS)
    by_hand = np.mean([(zb[0] - y[b]) ** 2 for b, (zb, _) in enumerate(alone)])
    assert loss == pytest.approx(by_hand, rel=1e-12)


def test_every_step_losses_count_the_real_steps_only():
    x, y = _data("every", "ce")
    nll = []
    plain = _model("lstm", layers=2, readout="every", loss="ce")
    loss, _ = plain.forward(x, y, None, LENGTHS)
    for b, (zb, _) in enumerate(_alone(plain, x)):
        L = LENGTHS[b]
        nll += list(-_log_softmax(zb[:, 0])[np.arange(L), y[:L, b]])
    assert loss == pytest.approx(np.mean(nll), rel=1e-12)
    assert len(nll) == LENGTHS.sum()
    z, _ = plain.predict(x, None, LENGTHS)
    past = np.arange(T)[:, None] >= LENGTHS[None, :]
    np.testing.assert_allclose(z[past], np.broadcast_to(plain.c, (past.sum(), O)))


def test_the_padding_and_its_targets_are_never_read():
    model = _model(readout="every", loss="mse", layers=2)
    x, y = _data("every", "mse")
    loss, _ = model.forward(x, y, None, LENGTHS)
    model.backward()
    grads = [g.copy() for _, g in model.buffers]
    past = np.arange(T)[:, None] >= LENGTHS[None, :]
    x2, y2 = x.copy(), y.copy()
    x2[past], y2[past] = -5.0, 1e6
    assert model.forward(x2, y2, None, LENGTHS)[0] == loss
    model.backward()
    for g, (_, again) in zip(grads, model.buffers, strict=True):
        np.testing.assert_array_equal(g, again)


@pytest.mark.parametrize("variant", ["gru", "lstm", "mgu"])
@pytest.mark.parametrize("readout,loss,options", [
    ("last", "mse", {}),
    ("every", "ce", {"layers": 2}),
    ("last", "ce", {"layers": 2, "bidirectional": True, "dropout": 0.3, "zoneout": 0.25}),
])
def test_gradients_match_central_differences(variant, readout, loss, options):
    model = _model(variant, readout=readout, loss=loss, **options)
    x, y = _data(readout, loss, seed=2)
    fixed = None if model.mask_rng is None else model.mask_rng.bit_generator.state

    def forward():  # every call draws the same masks
        if fixed is not None:
            model.mask_rng.bit_generator.state = fixed
        return model.forward(x, y, None, LENGTHS)[0]

    forward()
    model.backward()
    assert_model_gradients_match_finite_differences(model, forward, nonzero=True)


def test_all_lengths_t_is_the_model_without_lengths():
    model = _model("gru", layers=2, readout="every", loss="ce", bidirectional=False)
    x, y = _data("every", "ce")
    full = np.full(B, T)
    assert model.forward(x, y, None, full)[0] == model.forward(x, y)[0]
    np.testing.assert_array_equal(model.predict(x, None, full)[0], model.predict(x)[0])


@pytest.mark.parametrize("lengths, words", [
    (np.array([6, 0, 4, 1]), "lengths must be at least 1"),
    (np.array([7, 2, 4, 1]), r"lengths must be in \[0, 6\]"),
    (np.array([6, 2, 4]), "one length per batch row"),
    (np.array([6.0, 2, 4, 1]), "lengths must be integers"),
])
def test_bad_lengths_are_one_line_errors(lengths, words):
    model = _model()
    x, y = _data()
    for call in (lambda: model.forward(x, y, None, lengths),
                 lambda: model.predict(x, None, lengths)):
        with pytest.raises(ValueError, match=words) as info:
            call()
        assert "\n" not in str(info.value)


def test_every_step_targets_that_do_not_fit_the_padded_batch_are_one_line_errors():
    model = _model(readout="every")
    x, y = _data("every")
    with pytest.raises(ValueError, match=r"targets of shape \(4, 6, 2\) do not fit 6 steps"
                       r" × 4 rows") as info:
        model.forward(x, y.transpose(1, 0, 2), None, LENGTHS)
    assert "\n" not in str(info.value)


@pytest.fixture
def plain():
    """A registered backend whose model runner applies no feature (never built here)."""
    backend = register(PlainRunner())
    yield backend
    unregister(backend.name)


def test_a_runner_without_lengths_is_refused_before_any_work(plain):
    # No work is needed: the refusal comes before a layer (or a device) is made.
    assert "lengths" in get_backend("cpu").runner_features()
    assert "lengths" in get_backend("cuda").runner_features()  # its device runner
    assert "lengths" not in plain.runner_features()
    with pytest.raises(ValueError, match=r"^sequence lengths: the model runner of backend"
                                         r" plain_runner does not apply it \(the cpu"
                                         r" and cuda backends' do\)$"):
        check_config("gru", "adding", seq_len=8, min_len=4, backend=plain.name)
    check_config("gru", "adding", seq_len=8, min_len=3, backend="cuda", require_device=False)


# -------------------------------------------------------------------- the task
def test_the_variable_length_adding_problem():
    task = make_task("adding", seq_len=20, min_len=5)
    assert task.variable_length and task.config() == {"seq_len": 20, "min_len": 5}
    assert task.baseline == pytest.approx(1 / 6)
    b = next(task.train_batches(np.random.default_rng(0), 500))
    x, y, lens = b.x, b.y, b.lengths
    assert x.shape == (20, 500, 2) and y.shape == (500, 1) and lens.dtype == np.int64
    assert lens.min() == 5 and lens.max() == 20  # 500 draws cover [5, 20]
    past = np.arange(20)[:, None] >= lens[None, :]
    assert (x[past] == 0).all()
    for r in range(500):
        L = lens[r]
        marked = np.flatnonzero(x[:, r, 1])
        assert len(marked) == 2 and marked[0] < L // 2 <= marked[1] < L
        assert y[r, 0] == pytest.approx(x[marked, r, 0].sum(), rel=1e-15)
    for split in ("val", "test"):  # fixed by the options alone
        a, c = task.split(split), make_task("adding", seq_len=20, min_len=5).split(split)
        np.testing.assert_array_equal(a.lengths, c.lengths)
        np.testing.assert_array_equal(a.x, c.x)


def test_a_fixed_length_task_is_as_before():
    task = make_task("adding", seq_len=10)
    assert not task.variable_length and task.config() == {"seq_len": 10}
    b = next(task.train_batches(np.random.default_rng(0), 3))
    assert b.lengths is None
    from gruablate.tasks.adding import generate
    x, y = generate(np.random.default_rng(0), 10, 3)
    np.testing.assert_array_equal(b.x, x)
    np.testing.assert_array_equal(b.y, y)


@pytest.mark.parametrize("min_len, words", [(1, "min_len must be at least 2"),
                                            (11, "min_len must be at most 10"),
                                            (2.5, "min_len must be an integer")])
def test_bad_min_len_is_a_one_line_error(min_len, words):
    with pytest.raises(ValueError, match=words):
        make_task("adding", seq_len=10, min_len=min_len)


# --------------------------------------------------------------------- training
def test_training_on_padded_sequences_learns_and_is_deterministic():
    options = dict(hidden=16, steps=300, batch=16, seq_len=20, min_len=6, lr=0.01,
                   eval_every=100, seed=1)
    record = gruablate.train("gru", "adding", **options)
    assert record["status"] == "ok", record["error"]
    assert record["task_options"] == {"seq_len": 20, "min_len": 6}
    assert record["metric"] < 0.5 * record["baseline"]  # it reads each row's own end
    again = gruablate.train("gru", "adding", **options)
    strip = lambda r: {k: v for k, v in r.items() if k not in (*TIMING_KEYS, "versions")}  # noqa: E731
    assert strip(again) == strip(record)


def test_run_train_takes_min_len(tmp_path):
    out = tmp_path / "rec.json"
    result = CliRunner().invoke(main, [
        "run", "train", "--task", "adding", "--seq-len", "8", "--min-len", "3",
        "--hidden", "4", "--steps", "3", "--batch", "4", "--out", str(out),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["task_options"] == {"seq_len": 8, "min_len": 3}
    result = CliRunner().invoke(main, [
        "run", "train", "--task", "adding", "--seq-len", "8", "--min-len", "9",
        "--out", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "min_len must be at most 8" in result.output
    assert not (tmp_path / "bad.json").exists()


def test_a_study_task_takes_min_len_and_its_cells_train(tmp_path):
    study = Study.from_dict({"name": "v", "variants": ["gru"], "tasks": {"adding": {
        "seq_len": 8, "min_len": 3}}, "hidden": [4], "seeds": [0], "steps": 3,
        "batch": 4})
    (cell,) = study.cells()
    assert cell.config["task_options"] == {"seq_len": 8, "min_len": 3}
    plain = Study.from_dict({"name": "v", "variants": ["gru"], "tasks": {"adding": {
        "seq_len": 8}}, "hidden": [4], "seeds": [0], "steps": 3, "batch": 4})
    assert plain.cells()[0].id != cell.id
    record = gruablate.train(**cell.train_kwargs())
    assert record["status"] == "ok", record["error"]
