"""Dropout between stacked layers and zoneout on ``h`` in gruablate's own model, training
loop, CLI and studies (``Model(dropout=, zoneout=)``, ``train``, ``run train``,
``run sweep``, a study's settings and ``[search]``).

Oracles: the model's loss against the layers run by hand with the masks it drew (drawn
again from the same generator state); evaluation against the layers run with ``m = p``;
the model's gradients against central finite differences in float64, every forward
drawing the same masks (the mask generator's state restored before each); two runs of
one seed bit for bit; a rate of 0 against a run that never heard of it, record for
record and cell id for cell id.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_model_gradients_match_finite_differences

import gruablate
from gruablate.backends import get_backend, register, unregister
from gruablate.backends.base import Backend
from gruablate.cli import main
from gruablate.errors import StudyError
from gruablate.losses import loss_and_grad
from gruablate.model import Model
from gruablate.study import Study, load_study
from gruablate.train import TIMING_KEYS, check_config

T, B, I, H, O = 6, 5, 3, 4, 3
TINY = dict(hidden=6, steps=4, batch=4, seq_len=8, eval_every=2)


def _model(variant="gru", layers=2, dtype="float64", seed=3, **kw):
    kw.setdefault("loss", "mse")
    return Model(variant, input_size=I, hidden=H, output_size=O, layers=layers, seed=seed,
                 dtype=dtype, **kw)


def _data(seed=0, readout="every", loss="mse"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I))
    shape = (T, B) if readout == "every" else (B,)
    y = rng.integers(0, O, shape) if loss == "ce" else rng.standard_normal((*shape, O))
    return x, y


def _by_hand(model, x, masks):
    """The model's output run through its layers' public API with the given masks."""
    h = np.ascontiguousarray(x, dtype=model.dtype)
    for layer, (z, d) in zip(model.layers, masks, strict=True):
        h, _ = layer.forward(h, zoneout=z, keep=False)
        if d is not None:
            h = h * d
    top = h if model.readout == "every" else h[-1]
    return top @ model.V.T + model.c


def _without_timing(record):
    return {k: v for k, v in record.items() if k not in (*TIMING_KEYS, "versions")}


# ------------------------------------------------------------------- the model
@pytest.mark.parametrize("variant", ["gru", "lstm"])
def test_a_training_forward_is_the_layers_run_by_hand_with_its_masks(variant):
    model = _model(variant, layers=3, dropout=0.25, zoneout=0.3)
    x, y = _data()
    before = model.mask_rng.bit_generator.state
    loss, _ = model.forward(x, y)
    drawn = model.runner.masks
    # The same generator state draws the same masks: they come from the model's own
    # stream, layer by layer.
    model.mask_rng.bit_generator.state = before
    again = model.masks(T, B, training=True)
    for (z, d), (z2, d2) in zip(drawn, again, strict=True):
        np.testing.assert_array_equal(z, z2)
        assert (d is None) == (d2 is None)
        if d is not None:
            np.testing.assert_array_equal(d, d2)
    assert [d is None for _, d in drawn] == [False, False, True]  # none above the top
    for z, d in drawn:
        assert z.shape == (T, B, H) and z.dtype == np.float64
        assert set(np.unique(z)) <= {0.0, 1.0} and 0 < z.mean() < 1
        if d is not None:
            assert set(np.unique(d)) <= {0.0, 1 / 0.75} and d.mean() > 0
    want, _ = loss_and_grad("mse", _by_hand(model, x, drawn), y)
    assert loss == want  # bit for bit: the same kernels on the same arrays


def test_each_training_forward_draws_new_masks_and_a_seed_its_own():
    x, y = _data()
    model = _model(zoneout=0.3, dropout=0.3)
    model.forward(x, y)
    first = [z.copy() for z, _ in model.runner.masks]
    model.forward(x, y)
    assert not all(np.array_equal(a, z) for a, (z, _) in zip(first, model.runner.masks,
                                                             strict=True))
    other = _model(zoneout=0.3, dropout=0.3, seed=4)
    other.forward(x, y)
    assert not np.array_equal(other.runner.masks[0][0], first[0])
    same = _model(zoneout=0.3, dropout=0.3)
    same.forward(x, y)
    np.testing.assert_array_equal(same.runner.masks[0][0], first[0])


def test_the_parameters_of_a_seed_do_not_change_with_the_rates():
    plain, regular = _model(seed=9), _model(seed=9, dropout=0.2, zoneout=0.1)
    for (a, _), (b, _) in zip(plain.buffers, regular.buffers, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("readout", ["every", "last"])
def test_evaluation_uses_the_expectation_and_no_dropout(readout):
    model = _model(dropout=0.4, zoneout=0.3, readout=readout)
    x, _ = _data(readout=readout)
    state = model.mask_rng.bit_generator.state
    z1, _ = model.predict(x)
    z2, _ = model.predict(x)
    np.testing.assert_array_equal(z1, z2)
    assert model.mask_rng.bit_generator.state == state  # evaluation draws nothing
    p = np.full((T, B, H), 0.3)
    np.testing.assert_array_equal(z1, _by_hand(model, x, [(p, None), (p, None)]))
    plain = _model(readout=readout)  # the same parameters, no zoneout: another output
    assert not np.allclose(plain.predict(x)[0], z1)


@pytest.mark.parametrize("variant", ["gru", "lstm"])
@pytest.mark.parametrize("readout,loss", [("every", "ce"), ("last", "mse")])
def test_gradients_through_dropout_and_zoneout_match_central_differences(
        variant, readout, loss):
    model = _model(variant, layers=3, dropout=0.3, zoneout=0.25, readout=readout, loss=loss)
    x, y = _data(1, readout, loss)
    fixed = model.mask_rng.bit_generator.state

    def forward():  # every forward draws the same masks
        model.mask_rng.bit_generator.state = fixed
        return model.forward(x, y)[0]

    forward()
    masks = model.runner.masks
    assert any((d == 0).any() for _, d in masks if d is not None)  # dropout acts
    assert all(0 < z.mean() < 1 for z, _ in masks)  # zoneout acts
    model.backward()
    assert_model_gradients_match_finite_differences(model, forward)


def test_rates_of_zero_are_the_plain_model():
    x, y = _data()
    plain, zero = _model(), _model(dropout=0.0, zoneout=0)
    assert zero.mask_rng is None and zero.masks(T, B, training=True) is None
    for m in (plain, zero):
        m.forward(x, y)
        m.backward()
    assert zero.runner.masks is None
    for (a, ga), (b, gb) in zip(plain.buffers, zero.buffers, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ga, gb)


# --------------------------------------------------------------------- refusals
@pytest.mark.parametrize("what", ["dropout", "zoneout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True, None])
def test_a_bad_rate_is_a_one_line_error(what, value):
    with pytest.raises(ValueError, match=rf"^{what} must be a number in \[0, 1\), got"):
        _model(**{what: value})
    with pytest.raises(ValueError, match=rf"^{what} must be a number in \[0, 1\), got"):
        check_config("gru", "adding", layers=2, **{what: value})


def test_dropout_needs_stacked_layers():
    with pytest.raises(ValueError, match="dropout acts between stacked layers; layers=1"):
        _model(layers=1, dropout=0.2)
    with pytest.raises(ValueError, match="dropout acts between stacked layers"):
        gruablate.train("gru", "adding", dropout=0.2, **TINY)
    _model(layers=1, zoneout=0.2)  # zoneout acts on every layer


class PlainRunner(Backend):
    """A backend whose model runner applies none of the features (never built here)."""

    name = "plain_runner"

    def layer(self, *args):  # pragma: no cover - never built
        raise AssertionError

    def model_runner(self, model):  # pragma: no cover - never built
        raise AssertionError


@pytest.fixture
def plain():
    backend = register(PlainRunner())
    yield backend
    unregister(backend.name)


def test_a_runner_without_the_features_is_refused_before_any_work(plain):
    # No work is needed: the refusal comes before a layer (or a device) is made.
    every = {"dropout", "zoneout", "bidirectional"}
    assert every <= get_backend("cpu").runner_features()
    assert every <= get_backend("cuda").runner_features()  # its device runner has them
    assert plain.runner_features() == frozenset()
    for rates in ({"zoneout": 0.1}, {"dropout": 0.1}):
        with pytest.raises(ValueError, match=r"^(dropout|zoneout): the model runner of backend"
                                             r" plain_runner does not apply it \(the cpu"
                                             r" and cuda backends' do\)$"):
            _model(backend=plain.name, **rates)
        with pytest.raises(ValueError, match="backend plain_runner does not apply it"):
            check_config("gru", "adding", layers=2, backend=plain.name, **rates)


def test_a_backend_with_a_runner_of_its_own_has_no_features_unless_it_says_so():
    class Own(Backend):
        name = "own"

        def layer(self, *args):  # pragma: no cover - never built
            raise AssertionError

        def model_runner(self, model):  # pragma: no cover - never built
            raise AssertionError

    class Says(Own):
        def runner_features(self):
            return frozenset({"zoneout"})

    assert Own().runner_features() == frozenset()
    assert Says().runner_features() == {"zoneout"}


# ---------------------------------------------------------------------- train
def test_training_is_deterministic_and_the_rates_are_recorded():
    kw = dict(TINY, layers=2, dropout=0.2, zoneout=0.1, seed=5)
    a = gruablate.train("gru", "adding", **kw)
    b = gruablate.train("gru", "adding", **kw)
    assert a["status"] == "ok", a["error"]
    assert _without_timing(a) == _without_timing(b)  # the loss trajectory bit for bit
    assert a["dropout"] == 0.2 and a["zoneout"] == 0.1
    plain = gruablate.train("gru", "adding", **dict(kw, dropout=0.0, zoneout=0.0))
    assert [p["train_loss"] for p in plain["curve"]] != [p["train_loss"] for p in a["curve"]]
    other = gruablate.train("gru", "adding", **dict(kw, seed=6))
    assert [p["train_loss"] for p in other["curve"]] != [p["train_loss"] for p in a["curve"]]


def test_rates_of_zero_give_the_same_record_as_none():
    kw = dict(TINY, layers=2, seed=2)
    plain = gruablate.train("gru", "adding", **kw)
    zero = gruablate.train("gru", "adding", dropout=0.0, zoneout=0, **kw)
    assert "dropout" not in plain and "zoneout" not in plain
    assert _without_timing(plain) == _without_timing(zero)
    assert list(plain) == list(zero)  # the same keys in the same order: the same JSON


# ------------------------------------------------------------------------ CLI
def test_run_train_takes_zoneout_and_records_it(tmp_path):
    out = tmp_path / "rec.json"
    result = CliRunner().invoke(main, [
        "run", "train", "--task", "adding", "--seq-len", "8", "--hidden", "4", "--steps",
        "3", "--batch", "4", "--zoneout", "0.1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["zoneout"] == 0.1 and "dropout" not in record


@pytest.mark.parametrize("args, words", [
    (["--zoneout", "1"], "zoneout must be a number in [0, 1)"),
    (["--dropout", "-0.5", "--layers", "2"], "dropout must be a number in [0, 1)"),
    (["--dropout", "0.2"], "dropout acts between stacked layers"),
    (["--dropout", "x"], "'x' is not a valid float"),
])
def test_run_train_refuses_a_bad_rate_with_a_usage_error(tmp_path, args, words):
    result = CliRunner().invoke(main, ["run", "train", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and words in result.output
    assert not any(tmp_path.iterdir())


def test_run_train_refuses_a_rate_the_runner_lacks_with_a_usage_error(tmp_path,
                                                                       monkeypatch):
    # The CLI offers the built-in backends only, and both apply the rates: a CUDA
    # runner without them stands in for a backend that lacks them.
    monkeypatch.setattr(type(get_backend("cuda")), "runner_features",
                        lambda self: frozenset())
    result = CliRunner().invoke(main, ["run", "train", "--out", str(tmp_path), "--zoneout",
                                       "0.1", "--backend", "cuda"])
    assert result.exit_code == 2 and "backend cuda does not apply it" in " ".join(
        result.output.split())
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------- studies
def _study(**extra):
    return Study.from_dict({"name": "r", "variants": ["gru"], "tasks": {"adding": {
        "seq_len": 8}}, "hidden": [4], "layers": [2], "seeds": [0, 1], "steps": 3,
        "batch": 4, **extra})


def test_a_study_setting_is_in_its_cells_and_a_rate_of_zero_changes_no_id():
    plain, zero = _study(), _study(dropout=0.0, zoneout=0)
    assert [c.id for c in plain.cells()] == [c.id for c in zero.cells()]
    assert plain.to_dict() == zero.to_dict()
    study = _study(zoneout=0.1)
    cells = study.cells()
    assert all(c.config["zoneout"] == 0.1 and "dropout" not in c.config for c in cells)
    assert all(c.train_kwargs()["zoneout"] == 0.1 for c in cells)
    assert not {c.id for c in cells} & {c.id for c in plain.cells()}
    assert study.cell_settings()["adding"]["zoneout"] == 0.1
    assert all("zoneout" not in c.train_kwargs() for c in plain.cells())
    # a task's table may set its own
    own = Study.from_dict({"name": "r", "variants": ["gru"], "layers": [2], "hidden": [4],
                           "tasks": {"adding": {"dropout": 0.3}, "copy": {}}})
    assert {c.config["task"]: c.config.get("dropout") for c in own.cells()} == {
        "adding": 0.3, "copy": None}


def test_a_search_draws_the_rates(tmp_path):
    study = _study(zoneout=0.1, search={"trials": 4, "dropout": "uniform(0, 0.5)"})
    cells = study.cells()
    assert len(cells) == 4 * 2
    for c in cells:
        drawn = study.search.draw(c.trial)["dropout"]
        assert 0 <= drawn <= 0.5 and c.config["dropout"] == drawn
        assert c.train_kwargs()["dropout"] == drawn and c.config["zoneout"] == 0.1
    assert len({c.config["dropout"] for c in cells}) == 4
    # choices, 0 among them: kept in the cell (a float), for the search's importance
    chosen = _study(search={"trials": 6, "zoneout": [0, 0.2]}).cells()
    assert {c.config["zoneout"] for c in chosen} == {0.0, 0.2}
    assert all(isinstance(c.config["zoneout"], float) for c in chosen)
    # end to end from a study file, through the executor: the records carry them
    cfg = tmp_path / "s.toml"
    cfg.write_text('name = "s"\nvariants = ["gru"]\nhidden = [4]\nlayers = [2]\n'
                   'seeds = [0]\nsteps = 2\nbatch = 4\nzoneout = 0.1\n'
                   '[tasks.adding]\nseq_len = 6\n'
                   '[search]\ntrials = 2\ndropout = "uniform(0, 0.5)"\n')
    from gruablate.execute import run_study

    summary = run_study(load_study(cfg), out=tmp_path / "run", jobs=1)
    assert summary.exit_code == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    assert len(records) == 2
    for r in records:
        assert r["status"] == "ok" and r["zoneout"] == 0.1 and 0 <= r["dropout"] <= 0.5


@pytest.mark.parametrize("extra, words", [
    ({"zoneout": 1}, "zoneout for task 'adding' must be a number in [0, 1), got 1"),
    ({"dropout": "a lot"}, "dropout for task 'adding' must be a number in [0, 1)"),
    ({"dropout": 0.2, "layers": [1, 2]}, "dropout acts between stacked layers"),
    ({"search": {"trials": 2, "dropout": "uniform(0, 1)"}}, "search.dropout must draw"),
    ({"search": {"trials": 2, "zoneout": [0, 1.5]}}, "search.zoneout must draw"),
    ({"search": {"trials": 2, "zoneout": ["high"]}}, "search.zoneout must draw"),
])
def test_a_bad_rate_stops_the_study_before_any_cell(extra, words):
    with pytest.raises(StudyError, match=None) as info:
        _study(**extra)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_rate_the_runner_lacks_stops_the_study_before_any_cell(plain):
    with pytest.raises(StudyError) as info:
        _study(zoneout=0.1, backends=[plain.name])
    assert "plain_runner does not apply it" in str(info.value) and "\n" not in str(info.value)


def test_run_sweep_takes_the_rates(tmp_path):
    base = ["run", "sweep", "--variants", "gru", "--tasks", "adding", "--hidden", "4",
            "--layers", "2", "--seeds", "0", "--steps", "3", "--dry-run"]
    plain = CliRunner().invoke(main, base)
    ruled = CliRunner().invoke(main, [*base, "--dropout", "0.2", "--zoneout", "0.1"])
    assert plain.exit_code == 0 and ruled.exit_code == 0, ruled.output
    assert plain.output.split()[1] != ruled.output.split()[1]  # another cell id
    study = load_study(overrides={"variants": "gru", "tasks": "adding", "layers": "2",
                                  "dropout": 0.2, "zoneout": 0.1})
    assert all(c.config["dropout"] == 0.2 and c.config["zoneout"] == 0.1
               for c in study.cells())
    bad = CliRunner().invoke(main, [*base, "--zoneout", "2"])
    assert bad.exit_code == 2 and "zoneout for task 'adding' must be a number" in bad.output


def test_the_report_never_pools_cells_of_other_rates():
    import pandas as pd

    from gruablate.report.data import _distinguish_tasks

    train = pd.DataFrame({"id": ["a", "b", "c"], "task": ["adding"] * 3,
                          "task_options": ['{"seq_len": 8}'] * 3, "steps": [3] * 3,
                          "dropout": [np.nan, 0.2, np.nan], "zoneout": [np.nan] * 3})
    labelled, _ = _distinguish_tasks(train, pd.DataFrame())
    assert list(labelled["task"]) == ["adding (dropout=0.0)", "adding (dropout=0.2)",
                                      "adding (dropout=0.0)"]
    same, _ = _distinguish_tasks(train.drop(index=1), pd.DataFrame())
    assert set(same["task"]) == {"adding"}  # absent is off: nothing to tell apart
